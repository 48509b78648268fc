"""Job stores: where active job ids (leases) and finished responses (for replay) are kept.

A *lease* is a key holding a value (a random token plus the request's payload fingerprint) with a
time to live. Whoever set the value owns the job; renewing and releasing compare the value first,
so a holder whose lease expired can never extend or free a lease that somebody else now owns.

* :class:`MemoryJobStore`: one process (``flask run``, tests, a single gunicorn worker). Its
  replay records are capped in entries and bytes (oldest evicted first, evictions counted).
* :class:`RedisJobStore`: several processes or hosts sharing one Redis. ``SET key value NX PX ttl``
  to acquire, Lua scripts to compare-and-pexpire (renew) and compare-and-delete (release). Its
  replay records are bounded by their TTL (``PX``), and Redis's own ``maxmemory``.

A lease can be *shared* by several named parties (a request that handed its job off to a task
queue, and the worker that adopted it; see :mod:`.handoff`): :meth:`JobStore.share` names them,
and each :meth:`JobStore.leave` removes one. The lease is freed (and the replay record stored)
when the last party leaves, and only if no party failed.

Store errors (Redis unreachable, timeouts) are raised as :class:`JobStoreError`; the guard turns
them into a 503 answer (or lets the request through when ``DIAGLOG_JOB_FAIL_OPEN`` is on).
"""

from __future__ import annotations

import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import ConfigError
from ..values import mask_url
from .scripts import CLAIM, LEAVE, RENEW, SHARE

__all__ = [
    "ACQUIRED",
    "ADOPTED",
    "BUSY",
    "DONE",
    "LOST",
    "RETAKEN",
    "Claim",
    "JobStore",
    "JobStoreError",
    "MemoryJobStore",
    "RedisJobStore",
    "make_store",
]

#: :attr:`Claim.outcome` values.
ACQUIRED = "acquired"
BUSY = "busy"
DONE = "done"
#: :meth:`JobStore.adopt` outcomes.
ADOPTED = "adopted"
RETAKEN = "retaken"
LOST = "lost"


class JobStoreError(Exception):
    """The job store could not be reached, or it failed to answer."""


@dataclass(frozen=True)
class Claim:
    """The answer of :meth:`JobStore.claim`.

    ``outcome`` is :data:`ACQUIRED` (the caller now holds the lease), :data:`BUSY` (somebody else
    holds it; ``holder`` is their lease value, when still known) or :data:`DONE` (a finished
    response is stored for replay; ``record`` holds it).
    """

    outcome: str
    holder: str | None = None
    record: str | None = None


class JobStore:
    """The store interface. All times are in seconds; every method may raise JobStoreError."""

    def claim(self, job_id: str, value: str, ttl: float, *, check_done: bool = False) -> Claim:
        """Atomically: return the stored record if ``check_done`` and one exists; else take the
        lease for ``job_id`` if it is free; else report the current holder."""
        raise NotImplementedError

    def renew(self, job_id: str, value: str, ttl: float) -> bool:
        """Extend our lease to ``ttl`` from now. If it expired and nobody took it, take it again.
        ``False`` when another holder owns the job now."""
        raise NotImplementedError

    def release(
        self, job_id: str, value: str, record: str | None = None, replay_ttl: float = 0.0
    ) -> bool:
        """Free the job if we still hold it, storing ``record`` for ``replay_ttl`` seconds first
        (when given). ``False`` when the lease was no longer ours (nothing is changed then)."""
        raise NotImplementedError

    def holder(self, job_id: str) -> str | None:
        """The current lease value of ``job_id``, or ``None`` when it is free."""
        raise NotImplementedError

    def share(
        self, job_id: str, value: str, party: str, others: Sequence[str], keep_ttl: float
    ) -> bool:
        """Share our lease: ``party`` (the caller, which renews it) and ``others`` (which will
        :meth:`adopt` it) each hold it until they :meth:`leave`. Once only parties that have
        not adopted it are left, it lives ``keep_ttl`` seconds more. ``False`` when the lease is
        no longer ours."""
        raise NotImplementedError(f"{self.describe()} does not support handing jobs off")

    def adopt(self, job_id: str, value: str, party: str, ttl: float) -> str:
        """``party`` takes its part of our shared lease and renews it from now on: renew it
        (``"adopted"``), re-take it if it expired and is free (``"retaken"``; its parties are
        forgotten), or ``"lost"`` when another holder owns the job now."""
        raise NotImplementedError(f"{self.describe()} does not support handing jobs off")

    def leave(
        self,
        job_id: str,
        value: str,
        party: str,
        record: str | None = None,
        replay_ttl: float = 0.0,
        *,
        failed: bool = False,
    ) -> bool:
        """``party`` is done with our lease. While other parties still hold it, keep ``record``
        for the last one to store; when ``party`` was the last one (or the lease is not
        shared), free it as :meth:`release` does, storing the record unless some party
        ``failed``. ``False`` when it was not ours (nothing is changed then)."""
        if party:
            raise NotImplementedError(f"{self.describe()} does not support handing jobs off")
        return self.release(job_id, value, None if failed else record, replay_ttl)

    def limit_replay(self, max_entries: int, max_bytes: int) -> None:
        """Cap the replay records kept (``DIAGLOG_JOB_REPLAY_MAX_ENTRIES`` and ``_MAX_BYTES``).
        Stores whose records are bounded otherwise (Redis: by their TTL) ignore it."""

    #: Replay records dropped by the caps, before their TTL (see :meth:`limit_replay`).
    evictions = 0

    def handoff_name(self) -> str:
        """Names the data this store shares, for hand-off tokens: two stores with the same name
        see the same leases. Default: :meth:`describe`."""
        return self.describe()

    def describe(self) -> str:
        """A name for messages (no passwords)."""
        return type(self).__name__

    def close(self) -> None:
        """Release client resources (connections). The store is not used afterwards."""


class _Shared:
    """A shared lease's parties, and the record the last of them stores (memory store)."""

    __slots__ = ("failed", "keep_ttl", "parties", "record", "replay_ttl")

    def __init__(self) -> None:
        #: Party -> whether it renews the lease (it adopted it).
        self.parties: dict[str, bool] = {}
        self.keep_ttl = 0.0
        self.record: str | None = None
        self.replay_ttl = 0.0
        self.failed = False


class MemoryJobStore(JobStore):
    """In-process store: dictionaries behind one lock. Thread-safe; not shared across processes.

    :param clock: a monotonic clock in seconds (tests pass a fake one).
    :param max_entries: most replay records kept; the oldest is evicted first.
    :param max_bytes: most bytes of replay records kept (as stored: the JSON with the
        base64 body, plus the key); the oldest are evicted first. A record larger than this is
        not kept.

    Evictions are counted in ``evictions``.
    """

    #: Expired entries are swept after this many claims.
    SWEEP_EVERY = 512

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._held: dict[str, tuple[str, float]] = {}
        #: Replay records, oldest first (insertion order): job id -> (record, expiry).
        self._done: dict[str, tuple[str, float]] = {}
        self._shared: dict[str, _Shared] = {}
        self._claims = 0
        self._uid = uuid.uuid4().hex[:16]
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        #: Bytes held by replay records (as counted against ``max_bytes``).
        self.replay_bytes = 0
        self.evictions = 0

    @property
    def replay_entries(self) -> int:
        """Replay records held now (expired ones included until they are swept)."""
        return len(self._done)

    def limit_replay(self, max_entries: int, max_bytes: int) -> None:
        with self._lock:
            self.max_entries = max_entries
            self.max_bytes = max_bytes
            self._evict(self._clock())

    def claim(self, job_id: str, value: str, ttl: float, *, check_done: bool = False) -> Claim:
        now = self._clock()
        with self._lock:
            self._claims += 1
            if self._claims % self.SWEEP_EVERY == 0:
                self._sweep(now)
            if check_done:
                done = self._done.get(job_id)
                if done is not None:
                    if done[1] > now:
                        return Claim(DONE, record=done[0])
                    self._drop_done(job_id)
            held = self._held.get(job_id)
            if held is not None and held[1] > now:
                return Claim(BUSY, holder=held[0])
            self._held[job_id] = (value, now + ttl)
            self._shared.pop(job_id, None)  # a shared lease that expired
            return Claim(ACQUIRED)

    def renew(self, job_id: str, value: str, ttl: float) -> bool:
        return self.adopt(job_id, value, "", ttl) != LOST

    def adopt(self, job_id: str, value: str, party: str, ttl: float) -> str:
        now = self._clock()
        with self._lock:
            held = self._held.get(job_id)
            self._held[job_id] = (value, now + ttl)
            if held is not None and held[1] > now:
                if held[0] != value:
                    self._held[job_id] = held
                    return LOST
                shared = self._shared.get(job_id)
                if party and shared is not None and party in shared.parties:
                    shared.parties[party] = True
                return ADOPTED
            self._shared.pop(job_id, None)  # re-taken: its parties are forgotten
            return RETAKEN

    def release(
        self, job_id: str, value: str, record: str | None = None, replay_ttl: float = 0.0
    ) -> bool:
        return self.leave(job_id, value, "", record, replay_ttl)

    def share(
        self, job_id: str, value: str, party: str, others: Sequence[str], keep_ttl: float
    ) -> bool:
        with self._lock:
            if not self._ours(job_id, value, self._clock()):
                return False
            shared = self._shared.setdefault(job_id, _Shared())
            shared.parties[party] = True
            shared.parties.update(dict.fromkeys(others, False))
            shared.keep_ttl = max(shared.keep_ttl, keep_ttl)
            return True

    def leave(
        self,
        job_id: str,
        value: str,
        party: str,
        record: str | None = None,
        replay_ttl: float = 0.0,
        *,
        failed: bool = False,
    ) -> bool:
        now = self._clock()
        with self._lock:
            if not self._ours(job_id, value, now):
                return False
            shared = self._shared.get(job_id) if party else None
            if shared is not None:
                shared.parties.pop(party, None)
                shared.failed = shared.failed or failed
                if record is not None:
                    shared.record, shared.replay_ttl = record, replay_ttl
                if shared.parties:
                    if not any(shared.parties.values()) and shared.keep_ttl > 0:
                        self._held[job_id] = (value, now + shared.keep_ttl)
                    return True
                del self._shared[job_id]
                record, replay_ttl = shared.record, shared.replay_ttl
                failed = shared.failed
            if record is not None and replay_ttl > 0 and not failed:
                self._drop_done(job_id)
                self._done[job_id] = (record, now + replay_ttl)
                self.replay_bytes += len(record) + len(job_id)
                self._evict(now)
            del self._held[job_id]
            return True

    def holder(self, job_id: str) -> str | None:
        now = self._clock()
        with self._lock:
            held = self._held.get(job_id)
            return held[0] if held is not None and held[1] > now else None

    def _ours(self, job_id: str, value: str, now: float) -> bool:
        held = self._held.get(job_id)
        return held is not None and held[0] == value and held[1] > now

    def _drop_done(self, job_id: str) -> None:
        done = self._done.pop(job_id, None)
        if done is not None:
            self.replay_bytes -= len(done[0]) + len(job_id)

    def _evict(self, now: float) -> None:
        done = self._done
        while done and (len(done) > self.max_entries or self.replay_bytes > self.max_bytes):
            oldest = next(iter(done))
            if done[oldest][1] > now:  # an expired one is not an eviction
                self.evictions += 1
            self._drop_done(oldest)

    def _sweep(self, now: float) -> None:
        for key in [k for k, (_, exp) in self._held.items() if exp <= now]:
            del self._held[key]
        for key in [k for k, (_, exp) in self._done.items() if exp <= now]:
            self._drop_done(key)
        for key in [k for k in self._shared if k not in self._held]:
            del self._shared[key]

    def handoff_name(self) -> str:
        # In-process only: a token from this store is adopted by this very store object.
        return f"memory:{self._uid}"

    def describe(self) -> str:
        return "memory"


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisJobStore(JobStore):
    """Redis store shared by every worker process and host that uses the same Redis.

    :param url: a ``redis://``, ``rediss://`` or ``unix://`` URL.
    :param prefix: prepended to every key. Keys are ``<prefix>{<job id>}:lease``,
        ``<prefix>{<job id>}:done`` (a replay record) and ``<prefix>{<job id>}:parties`` (a
        handed-off lease's holders); the braces keep them in one Redis Cluster slot.
    :param timeout: socket connect and read timeout in seconds. Short, so that an outage answers
        503 quickly instead of holding the request.
    :param client: an existing ``redis.Redis`` to use instead of one built from ``url``.

    The ``redis`` package is imported here, not at module import: it is the optional
    ``flask-diaglog[redis]`` extra.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "diaglog:",
        timeout: float = 0.5,
        client: Any = None,
    ) -> None:
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError as exc:
            raise ConfigError(
                f"DIAGLOG_JOB_STORE={mask_url(url)!r} needs the 'redis' package, which is not "
                "installed: pip install 'flask-diaglog[redis]' (or set DIAGLOG_JOB_STORE=memory "
                "for a single process)"
            ) from exc
        self.url = mask_url(url)
        self.prefix = prefix
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        if client is None:
            try:
                client = redis.Redis.from_url(
                    url,
                    socket_timeout=timeout,
                    socket_connect_timeout=timeout,
                    # One immediate retry: a pooled connection that died with a Redis restart is
                    # replaced transparently; a real outage still fails fast.
                    retry=Retry(NoBackoff(), 1),
                    decode_responses=True,
                    health_check_interval=30,
                )
            except ValueError as exc:
                raise ConfigError(
                    f"DIAGLOG_JOB_STORE={self.url!r} is not a usable Redis URL: {exc}"
                ) from exc
            # A store dropped without close() (its app was discarded) closes its connections.
            weakref.finalize(self, client.connection_pool.disconnect)
        self.client = client
        self._claim = client.register_script(CLAIM)
        self._renew = client.register_script(RENEW)
        self._share = client.register_script(SHARE)
        self._leave = client.register_script(LEAVE)

    def _keys(self, job_id: str) -> list[str]:
        base = f"{self.prefix}{{{job_id}}}"
        return [base + ":lease", base + ":done", base + ":parties"]

    def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except self._errors as exc:
            raise JobStoreError(f"{type(exc).__name__}: {exc}") from exc

    def claim(self, job_id: str, value: str, ttl: float, *, check_done: bool = False) -> Claim:
        code, data = self._run(
            self._claim,
            keys=self._keys(job_id),
            args=[value, _ms(ttl), "1" if check_done else "0"],
        )
        if code == 1:
            return Claim(ACQUIRED)
        if code == 2:
            return Claim(DONE, record=data)
        return Claim(BUSY, holder=data or None)

    def renew(self, job_id: str, value: str, ttl: float) -> bool:
        return self.adopt(job_id, value, "", ttl) != LOST

    def adopt(self, job_id: str, value: str, party: str, ttl: float) -> str:
        lease, _, parties = self._keys(job_id)
        code = self._run(self._renew, keys=[lease, parties], args=[value, _ms(ttl), party])
        return (LOST, ADOPTED, RETAKEN)[int(code)]

    def release(
        self, job_id: str, value: str, record: str | None = None, replay_ttl: float = 0.0
    ) -> bool:
        return self.leave(job_id, value, "", record, replay_ttl)

    def share(
        self, job_id: str, value: str, party: str, others: Sequence[str], keep_ttl: float
    ) -> bool:
        lease, _, parties = self._keys(job_id)
        args = [value, _ms(keep_ttl), party, *others]
        return bool(self._run(self._share, keys=[lease, parties], args=args))

    def leave(
        self,
        job_id: str,
        value: str,
        party: str,
        record: str | None = None,
        replay_ttl: float = 0.0,
        *,
        failed: bool = False,
    ) -> bool:
        rttl = _ms(replay_ttl) if replay_ttl > 0 else 0
        args = [value, record or "", rttl, party, "1" if failed else "0"]
        return bool(self._run(self._leave, keys=self._keys(job_id), args=args))

    def holder(self, job_id: str) -> str | None:
        value = self._run(self.client.get, self._keys(job_id)[0])
        return str(value) if value is not None else None

    def describe(self) -> str:
        return self.url

    def close(self) -> None:
        self.client.close()


def make_store(spec: str, *, timeout: float = 0.5) -> JobStore:
    """The store for a ``DIAGLOG_JOB_STORE`` value (``memory`` or a Redis URL)."""
    if spec == "memory":
        return MemoryJobStore()
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisJobStore(spec, timeout=timeout)
    raise ConfigError(
        f"DIAGLOG_JOB_STORE={spec!r} is not valid: expected 'memory' or a redis://, rediss:// "
        "or unix:// URL"
    )
