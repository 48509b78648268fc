"""The duplicate-job guard: ``@guard_job``, its problem+json answers, leases and their renewal.

While a job id is active, a second request for it is refused with ``409`` (:class:`DuplicateJob`).
A job is active from the moment a guarded view starts until the request is finished (teardown,
also when the view raised or a streamed body was closed early) **and** all background work the
request started with ``diaglog.spawn``/``diaglog.wrap`` has returned or raised.

How it fits the extension: the guard puts a :class:`JobLease` on the request's trace
(``trace.lease``). The extension releases that reference when the request ends, and ``wrap``/
``spawn`` retain it for the background work and release it when the work ends. When the last
reference goes, the lease is freed in the store. While it is held, a renewer thread extends the
store's TTL, so a long job never expires while it is alive, and a crashed holder frees the id
after ``DIAGLOG_JOB_TTL`` seconds.

Semantics follow the IETF httpapi Idempotency-Key draft: 409 while the original is in flight, a
replay of the stored response once it completed (``replay=True``), 422 when the same key comes with
a different payload, 400 when a required key is missing.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

from flask import Response, current_app, request
from flask.wrappers import Request
from werkzeug.exceptions import BadRequest, Conflict, ServiceUnavailable, UnprocessableEntity
from werkzeug.sansio.response import Response as SansIOResponse

from .context import Lease, Trace, current_trace
from .jobstores import (
    ACQUIRED,
    DONE,
    JobStore,
    JobStoreError,
    MemoryJobStore,
    RedisJobStore,
    make_store,
)
from .problems import ProblemError

if TYPE_CHECKING:
    from .extension import _State

__all__ = [
    "DuplicateJob",
    "IdempotencyKeyMismatch",
    "JobGuard",
    "JobIdRequired",
    "JobLease",
    "JobStore",
    "JobStoreError",
    "JobStoreUnavailable",
    "MemoryJobStore",
    "RedisJobStore",
    "get_job_guard",
    "guard_job",
]

F = TypeVar("F", bound=Callable[..., Any])
KeyFunc = Callable[[Request], "str | None"]

_LOGGER = "flask_diaglog.jobs"
#: Responses larger than this are not stored for replay.
REPLAY_MAX_BYTES = 1024 * 1024
#: Where the job id is looked up when no ``key=`` callable is given (for the 400 answer).
LOOKUP_SOURCES = (
    "the URL view argument job_id, the X-Job-ID header, the Idempotency-Key header, the JSON "
    "body field job_id, the form field job_id, or the query parameter job_id"
)
_PROBLEM = "urn:flask-diaglog:problem:"


# -- answers -------------------------------------------------------------------------------------


class DuplicateJob(ProblemError, Conflict):
    """409: the job id is already active. Customise with ``@app.errorhandler(409)``.

    :param job_id: the refused job id (also in the body and on :attr:`job_id`).
    :param response: a pre-built response to send instead of the problem+json body.
    """

    title = "Job already in progress"
    problem_type = _PROBLEM + "job-in-progress"

    def __init__(
        self, job_id: str, detail: str | None = None, *, response: Response | None = None
    ) -> None:
        if detail is None:
            detail = (
                f"The job {job_id!r} is already in progress. Wait until it has finished, "
                "then retry."
            )
        super().__init__(detail, response=response, job_id=job_id)
        #: The job id that is already in progress.
        self.job_id = job_id


class IdempotencyKeyMismatch(ProblemError, UnprocessableEntity):
    """422: the key was already used for a request with a different payload."""

    title = "Idempotency key reused with a different payload"
    problem_type = _PROBLEM + "idempotency-key-reused"

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"The key {job_id!r} was already used for a request with a different payload "
            "(method, path, query or body). Use a new key for a new request.",
            job_id=job_id,
        )
        self.job_id = job_id


class JobIdRequired(ProblemError, BadRequest):
    """400: the view requires a job id (idempotency key) and the request has none."""

    title = "Job id required"
    problem_type = _PROBLEM + "job-id-required"

    def __init__(self, where: str) -> None:
        super().__init__(
            f"This endpoint requires a job id (idempotency key). It is looked up in {where}.",
            looked_up_in=where,
        )


class JobStoreUnavailable(ProblemError, ServiceUnavailable):
    """503: the job store cannot be reached, so the job cannot be started safely."""

    title = "Job store unavailable"
    problem_type = _PROBLEM + "job-store-unavailable"

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"The job {job_id!r} cannot be started safely right now because the job store is "
            "unreachable. Retry in a moment.",
            job_id=job_id,
        )
        self.job_id = job_id
        #: Seconds in the ``Retry-After`` header.
        self.retry_after = 1

    def get_response(  # type: ignore[override]
        self, environ: Any = None, scope: dict[str, Any] | None = None
    ) -> SansIOResponse:
        response = super().get_response(environ, scope)
        if self.response is None and self.retry_after is not None:
            response.headers["Retry-After"] = str(self.retry_after)
        return response


# -- leases --------------------------------------------------------------------------------------


class JobLease:
    """A held job: reference-counted by the request and its background work.

    Implements the ``Lease`` protocol of :mod:`.context`: ``retain()`` when background work is
    handed the job, ``release()`` when a holder is done. The last ``release()`` frees the job in
    the store (storing the response for replay when there is one and nothing failed).
    """

    __slots__ = (
        "_count",
        "_lock",
        "ended",
        "failed",
        "guard",
        "job_id",
        "lost",
        "record",
        "renew_at",
        "replay",
        "store_lock",
        "ttl",
        "value",
    )

    def __init__(self, guard: JobGuard, job_id: str, value: str, ttl: float, replay: bool) -> None:
        self.guard = guard
        self.job_id = job_id
        self.value = value
        self.ttl = ttl
        self.replay = replay
        #: The finished response, encoded for the store (``replay=True`` only).
        self.record: str | None = None
        #: A holder ended with an exception: nothing is stored for replay.
        self.failed = False
        #: The store gave the job to somebody else (our lease expired during an outage).
        self.lost = False
        #: Freed in the store (or given up); the renewer must not touch it any more.
        self.ended = False
        #: Serialises renewal and release, so a renewal racing the release cannot re-take the
        #: lease after it was freed.
        self.store_lock = threading.Lock()
        self.renew_at = 0.0
        self._count = 1
        self._lock = threading.Lock()

    def retain(self) -> None:
        with self._lock:
            self._count += 1

    def release(self) -> None:
        # Called from ``finally`` blocks: an exception on its way out means that holder failed.
        if sys.exc_info()[0] is not None:
            self.failed = True
        with self._lock:
            self._count -= 1
            last = self._count == 0
        if last:
            self.guard.finish(self)

    def __repr__(self) -> str:
        return f"<JobLease {self.job_id} holders={self._count}>"


class _Leases:
    """Several leases held by one request (stacked guards): retained and released together."""

    __slots__ = ("leases",)

    def __init__(self, *leases: Lease) -> None:
        self.leases = leases

    def retain(self) -> None:
        for lease in self.leases:
            lease.retain()

    def release(self) -> None:
        for lease in reversed(self.leases):
            lease.release()


class _Renewer:
    """One daemon thread per guard that extends the TTL of held leases at a third of their TTL.

    Started lazily on the first lease, and again in a forked child (gunicorn workers), where the
    parent's thread does not exist.
    """

    def __init__(self, guard: JobGuard) -> None:
        self.guard = guard
        self.leases: set[JobLease] = set()
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self.pid = -1
        self.closed = False
        self.renewals = 0
        #: When the thread wakes next on its own; an earlier lease pokes it.
        self.next_at = 0.0

    def add(self, lease: JobLease) -> None:
        lease.renew_at = time.monotonic() + lease.ttl / 3
        with self.lock:
            if self.pid != os.getpid():
                self.leases.clear()  # the parent's leases are not ours to renew
                self.thread = None
                self.pid = os.getpid()
            self.leases.add(lease)
            if self.thread is None and not self.closed:
                self.thread = threading.Thread(
                    target=self._run, name="diaglog-lease-renewer", daemon=True
                )
                self.thread.start()
            poke = lease.renew_at < self.next_at
        if poke:  # only when it sleeps past this lease's renewal: not once per request
            self.wake.set()

    def renew_all_soon(self) -> None:
        """Renew every held lease now (after a store outage, which may have lost them)."""
        with self.lock:
            for lease in self.leases:
                lease.renew_at = 0.0
        self.wake.set()

    def remove(self, lease: JobLease) -> None:
        with self.lock:
            self.leases.discard(lease)

    def close(self) -> None:
        self.closed = True
        self.wake.set()
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)

    def _run(self) -> None:
        while not self.closed:
            self.wake.clear()  # before the snapshot: an add() after this wakes the wait below
            with self.lock:  # snapshot and next_at together: add() sees one or the other
                leases = list(self.leases)
                now = time.monotonic()
                wait = min(min(lease.renew_at for lease in leases) - now, 60.0) if leases else 60.0
                self.next_at = now + wait if wait > 0 else 0.0
            if wait > 0:
                self.wake.wait(wait)
                continue
            for lease in leases:
                if lease.renew_at <= now:
                    try:
                        self._renew(lease)
                    except Exception as exc:  # keep renewing the others; say why
                        lease.renew_at = time.monotonic() + lease.ttl / 3
                        self.guard.emit(
                            "log",
                            logging.ERROR,
                            f"renewing the lease of job {lease.job_id} failed: "
                            f"{type(exc).__name__}: {exc}",
                            None,
                            job_id=lease.job_id,
                            exc=self.guard.state.format_exc(exc),
                        )

    def _renew(self, lease: JobLease) -> None:
        guard = self.guard
        lease.renew_at = time.monotonic() + lease.ttl / 3
        with lease.store_lock:
            if lease.ended:
                return  # released meanwhile
            try:
                ok = guard.store.renew(lease.job_id, lease.value, lease.ttl)
            except Exception as exc:
                guard.store_failed(exc, None, f"renewing the lease of job {lease.job_id!r}")
                lease.renew_at = time.monotonic() + min(lease.ttl / 3, 1.0)
                return
            if not ok:
                lease.lost = True
        guard.store_ok(None)
        self.renewals += 1
        if not ok:
            self.remove(lease)
            guard.emit(
                "log",
                logging.WARNING,
                f"job {lease.job_id} lease was taken over by another holder while its work was "
                "still running (it expired, e.g. during a job store outage); the job is no "
                "longer guarded",
                None,
                job_id=lease.job_id,
            )


# -- the per-app guard ---------------------------------------------------------------------------


class JobGuard:
    """The job store of one app and everything around it. Kept in ``state.extras["jobs"]``."""

    def __init__(self, state: _State, store: JobStore) -> None:
        s = state.settings
        self.state = state
        #: The store (``MemoryJobStore`` or ``RedisJobStore``).
        self.store = store
        #: Default lease TTL (``DIAGLOG_JOB_TTL``).
        self.ttl = s.job_ttl
        #: How long finished responses are kept for replay (``DIAGLOG_JOB_REPLAY_TTL``).
        self.replay_ttl = s.job_replay_ttl
        #: Let guarded requests through when the store is unreachable (``DIAGLOG_JOB_FAIL_OPEN``).
        self.fail_open = s.job_fail_open
        self.renewer = _Renewer(self)
        self._health = threading.Lock()
        self._outage_failures = 0  # 0 = healthy
        self.rejected = 0
        self.replayed = 0

    # -- lines ----------------------------------------------------------------------------------

    def emit(
        self,
        kind: str,
        level: int,
        msg: str,
        trace: Trace | None,
        *,
        job_id: str | None = None,
        exc: str | None = None,
        **fields: Any,
    ) -> None:
        """One line/event through ``state.emit``. Outside a request, a line about one job goes to
        ``jobs.log`` with that job id."""
        if trace is None and job_id is not None:
            trace = Trace(self.state, "job", None, job_id)
        self.state.emit(kind, level, msg, trace, fields, exc=exc, logger=_LOGGER)

    def store_failed(self, exc: BaseException, trace: Trace | None, action: str) -> None:
        """Count a store failure; the first one of an outage is logged with its reason."""
        with self._health:
            first = self._outage_failures == 0
            self._outage_failures += 1
        if first:
            reason = str(exc) if isinstance(exc, JobStoreError) else f"{type(exc).__name__}: {exc}"
            mode = (
                "Guarded requests run unguarded (DIAGLOG_JOB_FAIL_OPEN)"
                if self.fail_open
                else "Guarded requests get 503 until it is back"
            )
            self.emit(
                "log",
                logging.ERROR,
                f"job store {self.store.describe()} unreachable while {action} ({reason}). "
                f"{mode}; further failures are counted, not logged.",
                trace,
                store=self.store.describe(),
                error=reason,
            )

    def store_ok(self, trace: Trace | None) -> None:
        """Note a successful store call; the first one after an outage is logged."""
        if self._outage_failures == 0:
            return
        with self._health:
            failures, self._outage_failures = self._outage_failures, 0
        if failures:
            self.renewer.renew_all_soon()  # re-assert leases the store may have lost
            self.emit(
                "log",
                logging.INFO,
                f"job store {self.store.describe()} reachable again after {failures} failed calls",
                trace,
                store=self.store.describe(),
            )

    @property
    def healthy(self) -> bool:
        return self._outage_failures == 0

    def stats(self) -> dict[str, Any]:
        return {
            "store": self.store.describe(),
            "healthy": self.healthy,
            "active_leases": len(self.renewer.leases),
            "renewals": self.renewer.renewals,
            "rejected": self.rejected,
            "replayed": self.replayed,
        }

    # -- lease lifecycle ------------------------------------------------------------------------

    def finish(self, lease: JobLease) -> None:
        """Free ``lease`` in the store. Never raises (it runs in teardown and job threads)."""
        self.renewer.remove(lease)
        record = None
        if lease.replay and not lease.failed and self.replay_ttl > 0:
            record = lease.record
        with lease.store_lock:
            if lease.ended or lease.lost:
                lease.ended = True
                return
            lease.ended = True
            try:
                ok = self.store.release(lease.job_id, lease.value, record, self.replay_ttl)
            except Exception as exc:
                self.store_failed(
                    exc,
                    current_trace(),
                    f"freeing job {lease.job_id!r} (it frees itself at its TTL)",
                )
                return
        self.store_ok(current_trace())
        if not ok:
            self.emit(
                "log",
                logging.WARNING,
                f"job {lease.job_id} was no longer held in the store when it ended (its lease "
                "expired, or the store lost it in a restart), so it was not guarded all along; "
                "nothing was freed",
                current_trace(),
                job_id=lease.job_id,
            )

    def close(self) -> None:
        """Stop the renewer and close the store's connections."""
        self.renewer.close()
        self.store.close()


def setup(state: _State) -> None:
    """Create the job store of ``DIAGLOG_JOB_STORE`` and put the guard on ``state.extras``."""
    store = make_store(state.settings.job_store)
    state.extras["jobs"] = JobGuard(state, store)


def get_job_guard(app: Any = None) -> JobGuard:
    """The :class:`JobGuard` of ``app`` (default: ``current_app``)."""
    from .extension import get_state

    guard = get_state(app).extras.get("jobs")
    if guard is None:
        raise RuntimeError("flask-diaglog is disabled for this app (DIAGLOG_ENABLED is off)")
    return guard  # type: ignore[no-any-return]


# -- the decorator -------------------------------------------------------------------------------


@overload
def guard_job(view: F, /) -> F: ...


@overload
def guard_job(
    *,
    key: KeyFunc | None = None,
    required: bool = False,
    ttl: float | None = None,
    replay: bool = False,
) -> Callable[[F], F]: ...


def guard_job(
    view: F | None = None,
    /,
    *,
    key: KeyFunc | None = None,
    required: bool = False,
    ttl: float | None = None,
    replay: bool = False,
) -> F | Callable[[F], F]:
    """Refuse a request with 409 while its job id is active. Use bare or with options.

    :param key: ``(request) -> str | None`` giving the job id for this view, instead of the id the
        extension resolved (view argument ``job_id``, ``X-Job-ID``, ``Idempotency-Key``, JSON
        body, form, query, or ``DiagLog(job_id=...)``).
    :param required: answer 400 (problem+json) when the request has no job id. Otherwise a request
        without a job id runs unguarded.
    :param ttl: the lease TTL in seconds for this view (default ``DIAGLOG_JOB_TTL``). The lease is
        renewed while the job runs; the TTL only matters when the holder dies.
    :param replay: store the finished response (status, body, content type) for
        ``DIAGLOG_JOB_REPLAY_TTL`` seconds. A retry with the same key and payload gets it back
        (with ``Idempotent-Replayed: true``); the same key with another payload gets 422.

    The job stays active until the request has ended and all work started from it with
    ``diaglog.spawn``/``diaglog.wrap`` has returned. When the store is unreachable the answer is
    503 (problem+json), or with ``DIAGLOG_JOB_FAIL_OPEN`` the view runs unguarded.
    """
    if ttl is not None and not ttl > 0:
        raise ValueError(f"guard_job(ttl={ttl!r}): the TTL must be more than 0 seconds")

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            return _run_guarded(fn, args, kwargs, key, required, ttl, replay)

        return guarded  # type: ignore[return-value]

    if view is not None:
        return decorate(view)
    return decorate


def _run_guarded(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    key: KeyFunc | None,
    required: bool,
    ttl: float | None,
    replay: bool,
) -> Any:
    state = current_app.extensions.get("diaglog")
    guard: JobGuard | None = state.extras.get("jobs") if state is not None else None
    if state is None or guard is None or not state.active:
        return fn(*args, **kwargs)  # diaglog disabled or not registered: nothing to guard with
    req: Request = request._get_current_object()  # type: ignore[attr-defined]
    trace = current_trace()
    if trace is not None and trace.state is not state:
        trace = None
    job_id = _job_id(req, trace, state, key)
    if job_id is None:
        if required:
            raise JobIdRequired(_where(key, state))
        return fn(*args, **kwargs)

    if trace is not None and job_id in _held_ids(trace.lease):
        return fn(*args, **kwargs)  # a stacked guard already holds this very job

    fingerprint = _fingerprint(req) if replay else "-"
    value = f"{os.urandom(12).hex()} {fingerprint}"
    lease_ttl = ttl or guard.ttl
    try:
        claim = guard.store.claim(job_id, value, lease_ttl, check_done=replay)
    except Exception as exc:
        guard.store_failed(exc, trace, f"claiming job {job_id!r}")
        if not guard.fail_open:
            raise JobStoreUnavailable(job_id) from exc
        guard.emit(
            "log",
            logging.WARNING,
            f"job {job_id} runs unguarded: the job store is unreachable and "
            "DIAGLOG_JOB_FAIL_OPEN is on",
            trace,
            job_id=job_id,
        )
        return fn(*args, **kwargs)
    guard.store_ok(trace)

    if claim.outcome == DONE:
        return _replay(guard, trace, req, job_id, fingerprint, claim.record or "")
    if claim.outcome != ACQUIRED:
        holder_fp = claim.holder.partition(" ")[2] if claim.holder else ""
        if replay and holder_fp not in ("", "-") and holder_fp != fingerprint:
            _reject(guard, trace, req, job_id, "payload_mismatch")
            raise IdempotencyKeyMismatch(job_id)
        _reject(guard, trace, req, job_id, "in_progress")
        raise DuplicateJob(job_id)

    lease = JobLease(guard, job_id, value, lease_ttl, replay)
    guard.renewer.add(lease)
    if trace is None:
        # No trace (the path is in DIAGLOG_EXCLUDE): the job ends with the view.
        try:
            return _call_view(fn, args, kwargs, lease, fingerprint)
        finally:
            lease.release()
    # Released by the extension when the request ends (also on errors). A second guard on the
    # same request (two job ids) holds both.
    trace.lease = lease if trace.lease is None else _Leases(trace.lease, lease)
    return _call_view(fn, args, kwargs, lease, fingerprint)


def _held_ids(lease: Lease | None) -> list[str]:
    if isinstance(lease, JobLease):
        return [lease.job_id]
    if isinstance(lease, _Leases):
        return [i for inner in lease.leases for i in _held_ids(inner)]
    return []


def _call_view(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    lease: JobLease,
    fingerprint: str,
) -> Any:
    rv = fn(*args, **kwargs)
    if not lease.replay:
        return rv
    response = current_app.make_response(rv)
    lease.record = _encode_record(response, fingerprint)
    return response


def _job_id(req: Request, trace: Trace | None, state: _State, key: KeyFunc | None) -> str | None:
    from .extension import _lookup_job_id

    if key is None:
        if trace is not None and trace.lease is None:
            return trace.job_id
        # No trace, or another guard on this request already replaced trace.job_id: look again.
        return _lookup_job_id(req, state.ext.job_id_getter)
    job_id = _lookup_job_id(req, key)  # validated: an invalid id is a 400 (InvalidJobId)
    if trace is not None:
        trace.job_id = job_id  # every later line of this request carries the guarded id
    return job_id


def _where(key: KeyFunc | None, state: _State) -> str:
    if key is not None:
        return f"the key callable {getattr(key, '__qualname__', repr(key))} of this endpoint"
    getter = state.ext.job_id_getter
    if getter is not None:
        return f"the job id callable {getattr(getter, '__qualname__', repr(getter))} of DiagLog"
    return LOOKUP_SOURCES


def _fingerprint(req: Request) -> str:
    """A digest of what makes two requests "the same payload": method, path, query and body."""
    h = hashlib.sha256()
    h.update(f"{req.method} {req.path}?{req.query_string.decode('latin-1')}\n".encode())
    if req.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        # The body may already be parsed (the job id lookup reads form fields): hash the fields.
        for name, field in sorted(req.form.items(multi=True)):
            h.update(f"f {name}={field}\n".encode())
        for name, upload in sorted(req.files.items(multi=True), key=lambda kv: kv[0]):
            pos = upload.stream.tell()
            digest = hashlib.sha256(upload.stream.read()).hexdigest()
            upload.stream.seek(pos)
            h.update(f"u {name}={upload.filename}:{digest}\n".encode())
    else:
        h.update(req.get_data(cache=True))
    return h.hexdigest()[:32]


def _encode_record(response: Response, fingerprint: str) -> str | None:
    """The response as stored for replay, or ``None`` when it cannot or should not be stored."""
    if response.is_streamed or response.status_code >= 500:
        return None
    body = response.get_data()
    if len(body) > REPLAY_MAX_BYTES:
        return None
    record: dict[str, Any] = {
        "status": response.status_code,
        "content_type": response.content_type,
        "body": base64.b64encode(body).decode("ascii"),
        "fingerprint": fingerprint,
    }
    location = response.headers.get("Location")
    if location:
        record["location"] = location
    return json.dumps(record, separators=(",", ":"))


def _replay(
    guard: JobGuard,
    trace: Trace | None,
    req: Request,
    job_id: str,
    fingerprint: str,
    raw: str,
) -> Response:
    try:
        record = json.loads(raw)
        stored_fp = record["fingerprint"]
        body = base64.b64decode(record["body"])
        status = int(record["status"])
    except (ValueError, KeyError, TypeError) as exc:
        guard.emit(
            "log",
            logging.ERROR,
            f"job {job_id}: the stored response for replay is unreadable "
            f"({type(exc).__name__}: {exc}); answering 503 until it expires",
            trace,
            job_id=job_id,
        )
        raise JobStoreUnavailable(job_id) from exc
    if stored_fp != fingerprint:
        _reject(guard, trace, req, job_id, "payload_mismatch")
        raise IdempotencyKeyMismatch(job_id)
    guard.replayed += 1
    guard.emit(
        "log",
        logging.INFO,
        f"job_replayed {job_id} status={status}: the job already completed; its stored "
        "response is sent again",
        trace,
        job_id=job_id,
        replayed_status=status,
    )
    response = Response(body, status=status, content_type=record.get("content_type"))
    response.headers["Idempotent-Replayed"] = "true"
    if record.get("location"):
        response.headers["Location"] = record["location"]
    return response


def _reject(guard: JobGuard, trace: Trace | None, req: Request, job_id: str, reason: str) -> None:
    """The ``job_rejected`` line and event."""
    guard.rejected += 1
    if trace is None:
        return  # the path is excluded from logging
    what = "is already in progress" if reason == "in_progress" else "was used with another payload"
    guard.emit(
        "job_rejected",
        logging.INFO,
        f"job_rejected {req.method} {req.path} job {job_id} {what}",
        trace,
        method=req.method,
        path=req.path,
        reason=reason,
        status=409 if reason == "in_progress" else 422,
    )
