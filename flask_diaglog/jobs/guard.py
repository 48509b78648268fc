"""The per-app job guard and ``@guard_job``: claim a job id in the store or answer 409.

While a job id is active, a second request for it is refused with ``409`` (:class:`DuplicateJob`).
A job is active from the moment a guarded view starts until the request is finished (teardown,
also when the view raised or a streamed body was closed early) **and** all background work the
request started with ``diaglog.spawn``/``diaglog.wrap`` has returned or raised.

How it fits the extension: the guard puts a :class:`~.leases.JobLease` on the request's trace
(``trace.lease``). The request trail releases that reference when the request ends, and ``wrap``/
``spawn`` retain it for the background work and release it when the work ends.

Semantics follow the IETF httpapi Idempotency-Key draft: 409 while the original is in flight, a
replay of the stored response once it completed (``replay=True``, records encoded by
:mod:`.replay`), 422 when the same key comes with a different payload, 400 when a required key is
missing. A view that hands its job to a task queue keeps it active until the task ends: see
:mod:`.handoff`.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

from flask import Response, current_app, request
from flask.wrappers import Request

from ..context import Lease, Trace, current_trace
from ..hooks import lookup_job_id
from ..jobids import settle, unread_body
from ..problems import (
    DuplicateJob,
    IdempotencyKeyMismatch,
    JobIdRequired,
    JobIdUnreadable,
    JobStoreUnavailable,
)
from ..trail import LOGGER_GUARD, job_rejected_msg
from .leases import JobLease, Leases, Renewer
from .replay import REPLAY_MAX_BYTES, Replayed, encode_record, fingerprint
from .stores import ACQUIRED, DONE, JobStore, JobStoreError

if TYPE_CHECKING:
    from ..config import Settings
    from ..hooks import JobIdGetter
    from ..record import Recorder

__all__ = ["JobGuard", "get_job_guard", "guard_job"]

F = TypeVar("F", bound=Callable[..., Any])
KeyFunc = Callable[[Request], "str | None"]

#: Where the job id is looked up when no ``key=`` callable is given (for the 400 answer).
LOOKUP_SOURCES = (
    "the URL view argument job_id, the X-Job-ID header, the Idempotency-Key header, the JSON "
    "body field job_id, the form field job_id, or the query parameter job_id"
)


class JobGuard:
    """The job store of one app and everything around it.

    :param rec: the app's recorder (lines about jobs and the store).
    :param settings: the app's settings (``DIAGLOG_JOB_*``).
    :param store: the job store.
    :param getter: the app's job-id lookup override (``DiagLog(job_id=...)``), if any.
    """

    def __init__(
        self,
        rec: Recorder,
        settings: Settings,
        store: JobStore,
        getter: JobIdGetter | None = None,
    ) -> None:
        s = settings
        self.rec = rec
        self.getter = getter
        #: The store (``MemoryJobStore`` or ``RedisJobStore``).
        self.store = store
        #: Default lease TTL (``DIAGLOG_JOB_TTL``).
        self.ttl = s.job_ttl
        #: How long finished responses are kept for replay (``DIAGLOG_JOB_REPLAY_TTL``).
        self.replay_ttl = s.job_replay_ttl
        #: Let guarded requests through when the store is unreachable (``DIAGLOG_JOB_FAIL_OPEN``).
        self.fail_open = s.job_fail_open
        #: Largest response body stored for replay (1 MiB, or less under a smaller byte cap).
        self.replay_max_body = min(REPLAY_MAX_BYTES, s.job_replay_max_bytes)
        store.limit_replay(s.job_replay_max_entries, s.job_replay_max_bytes)
        self.renewer = Renewer(self)
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
        """One line through the recorder. Outside a request, a line about one job goes to
        ``jobs.log`` with that job id."""
        if trace is None and job_id is not None:
            self.rec.record(
                kind, None, level, msg, fields, exc=exc, logger=LOGGER_GUARD,
                ids=(None, job_id), target="jobs",
            )  # fmt: skip
            return
        self.rec.record(kind, trace, level, msg, fields, exc=exc, logger=LOGGER_GUARD)

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

    @property
    def replay_evictions(self) -> int:
        """Replay records the store dropped to stay under ``DIAGLOG_JOB_REPLAY_MAX_ENTRIES`` and
        ``DIAGLOG_JOB_REPLAY_MAX_BYTES`` before their TTL (memory store; Redis: always 0)."""
        return self.store.evictions

    def stats(self) -> dict[str, Any]:
        return {
            "store": self.store.describe(),
            "healthy": self.healthy,
            "active_leases": len(self.renewer.leases),
            "renewals": self.renewer.renewals,
            "rejected": self.rejected,
            "replayed": self.replayed,
            "replay_evictions": self.replay_evictions,
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
                ok = self.store.leave(
                    lease.job_id, lease.value, lease.party, record, self.replay_ttl,
                    failed=lease.failed,
                )  # fmt: skip
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


class _HasGuard(Protocol):
    guard: JobGuard | None


def _unregistered(app: Any) -> RuntimeError:
    return RuntimeError(
        f"The app {app.name!r} is not registered with flask-diaglog. "
        "Did you forget to call DiagLog(app) or diaglog.init_app(app)?"
    )


def get_job_guard(app: Any = None) -> JobGuard:
    """The :class:`JobGuard` of ``app`` (default: ``current_app``)."""
    app = app if app is not None else current_app._get_current_object()  # type: ignore[attr-defined]
    state: _HasGuard | None = app.extensions.get("diaglog")
    if state is None:
        raise _unregistered(app)
    if state.guard is None:
        raise RuntimeError("flask-diaglog is disabled for this app (DIAGLOG_ENABLED is off)")
    return state.guard


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
    state: _HasGuard | None = current_app.extensions.get("diaglog")
    if state is None:  # a guard that guards nothing would let duplicates run unseen
        raise _unregistered(current_app)
    guard = state.guard
    if guard is None:
        return fn(*args, **kwargs)  # DIAGLOG_ENABLED is off: nothing to guard with
    req: Request = request._get_current_object()  # type: ignore[attr-defined]
    trace = current_trace()
    if trace is not None and trace.rec is not guard.rec:
        trace = None
    job_id = _job_id(req, trace, guard, key)
    if job_id is None:
        if key is None and guard.getter is None:
            unread = unread_body(req)
            if unread is not None:  # an id there would go unseen: a duplicate could run
                raise JobIdUnreadable(*unread)
        if required:
            raise JobIdRequired(_where(key, guard))
        return fn(*args, **kwargs)

    if trace is not None and job_id in _held_ids(trace.lease):
        return fn(*args, **kwargs)  # a stacked guard already holds this very job

    fp = fingerprint(req) if replay else "-"
    value = f"{os.urandom(12).hex()} {fp}"
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
        return _replay(guard, trace, req, job_id, fp, claim.record or "")
    if claim.outcome != ACQUIRED:
        holder_fp = claim.holder.partition(" ")[2] if claim.holder else ""
        if replay and holder_fp not in ("", "-") and holder_fp != fp:
            _reject(guard, trace, req, job_id, "payload_mismatch")
            raise IdempotencyKeyMismatch(job_id)
        _reject(guard, trace, req, job_id, "in_progress")
        raise DuplicateJob(job_id)

    lease = JobLease(guard, job_id, value, lease_ttl, replay)
    guard.renewer.add(lease)
    if trace is None:
        # No trace (the path is in DIAGLOG_EXCLUDE): the job ends with the view.
        try:
            return _call_view(fn, args, kwargs, lease, fp)
        finally:
            lease.release()
    # Released by the extension when the request ends (also on errors). A second guard on the
    # same request (two job ids) holds both.
    trace.lease = lease if trace.lease is None else Leases(trace.lease, lease)
    return _call_view(fn, args, kwargs, lease, fp)


def _held_ids(lease: Lease | None) -> list[str]:
    if isinstance(lease, JobLease):
        return [lease.job_id]
    if isinstance(lease, Leases):
        return [i for inner in lease.leases for i in _held_ids(inner)]
    return []


def _call_view(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    lease: JobLease,
    fp: str,
) -> Any:
    rv = fn(*args, **kwargs)
    if not lease.replay:
        return rv
    response = current_app.make_response(rv)
    lease.record = encode_record(response, fp, lease.guard.replay_max_body)
    return response


def _job_id(req: Request, trace: Trace | None, guard: JobGuard, key: KeyFunc | None) -> str | None:
    # The strict lookup: an invalid id is a 400 (InvalidJobId) here, unlike on unguarded views.
    job_id = lookup_job_id(req, key if key is not None else guard.getter)
    if trace is not None and (key is not None or trace.lease is None):
        # Every later line of this request carries the guarded id.
        settle(trace, req)
        trace.job_id = job_id
    return job_id


def _where(key: KeyFunc | None, guard: JobGuard) -> str:
    if key is not None:
        return f"the key callable {getattr(key, '__qualname__', repr(key))} of this endpoint"
    getter = guard.getter
    if getter is not None:
        return f"the job id callable {getattr(getter, '__qualname__', repr(getter))} of DiagLog"
    return LOOKUP_SOURCES


def _replay(
    guard: JobGuard,
    trace: Trace | None,
    req: Request,
    job_id: str,
    fp: str,
    raw: str,
) -> Response:
    try:
        record = Replayed(raw)
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
    if record.fingerprint != fp:
        _reject(guard, trace, req, job_id, "payload_mismatch")
        raise IdempotencyKeyMismatch(job_id)
    status = record.status
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
    return record.response()


def _reject(guard: JobGuard, trace: Trace | None, req: Request, job_id: str, reason: str) -> None:
    """The ``job_rejected`` line and event."""
    guard.rejected += 1
    if trace is None:
        return  # the path is excluded from logging
    guard.emit(
        "job_rejected",
        logging.INFO,
        job_rejected_msg(req.method, req.path, job_id, reason),
        trace,
        method=req.method,
        path=req.path,
        reason=reason,
        status=409 if reason == "in_progress" else 422,
    )
