"""Job stores: where active job ids (leases) and finished responses (for replay) are kept.

A *lease* is a key holding a value (a random token plus the request's payload fingerprint) with a
time to live. Whoever set the value owns the job; renewing and releasing compare the value first,
so a holder whose lease expired can never extend or free a lease that somebody else now owns.

* :class:`MemoryJobStore`: one process (``flask run``, tests, a single gunicorn worker).
* :class:`RedisJobStore`: several processes or hosts sharing one Redis. ``SET key value NX PX ttl``
  to acquire, Lua scripts to compare-and-pexpire (renew) and compare-and-delete (release).

Store errors (Redis unreachable, timeouts) are raised as :class:`JobStoreError`; the guard turns
them into a 503 answer (or lets the request through when ``DIAGLOG_JOB_FAIL_OPEN`` is on).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..config import ConfigError

__all__ = [
    "ACQUIRED",
    "BUSY",
    "DONE",
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

    def describe(self) -> str:
        """A name for messages (no passwords)."""
        return type(self).__name__

    def close(self) -> None:
        """Release client resources (connections). The store is not used afterwards."""


class MemoryJobStore(JobStore):
    """In-process store: dictionaries behind one lock. Thread-safe; not shared across processes.

    :param clock: a monotonic clock in seconds (tests pass a fake one).
    """

    #: Expired entries are swept after this many claims.
    SWEEP_EVERY = 512

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._held: dict[str, tuple[str, float]] = {}
        self._done: dict[str, tuple[str, float]] = {}
        self._claims = 0

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
                    del self._done[job_id]
            held = self._held.get(job_id)
            if held is not None and held[1] > now:
                return Claim(BUSY, holder=held[0])
            self._held[job_id] = (value, now + ttl)
            return Claim(ACQUIRED)

    def renew(self, job_id: str, value: str, ttl: float) -> bool:
        now = self._clock()
        with self._lock:
            held = self._held.get(job_id)
            if held is not None and held[1] > now and held[0] != value:
                return False
            self._held[job_id] = (value, now + ttl)
            return True

    def release(
        self, job_id: str, value: str, record: str | None = None, replay_ttl: float = 0.0
    ) -> bool:
        now = self._clock()
        with self._lock:
            held = self._held.get(job_id)
            if held is None or held[0] != value or held[1] <= now:
                return False
            if record is not None and replay_ttl > 0:
                self._done[job_id] = (record, now + replay_ttl)
            del self._held[job_id]
            return True

    def holder(self, job_id: str) -> str | None:
        now = self._clock()
        with self._lock:
            held = self._held.get(job_id)
            return held[0] if held is not None and held[1] > now else None

    def _sweep(self, now: float) -> None:
        for table in (self._held, self._done):
            for key in [k for k, (_, exp) in table.items() if exp <= now]:
                del table[key]

    def describe(self) -> str:
        return "memory"


# KEYS[1] = lease key, KEYS[2] = replay record key; ARGV[1] = value, ARGV[2] = ttl ms,
# ARGV[3] = "1" to look for a replay record first.
_CLAIM = """
if ARGV[3] == '1' then
  local done = redis.call('GET', KEYS[2])
  if done then return {2, done} end
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1, ''} end
local holder = redis.call('GET', KEYS[1])
return {0, holder or ''}
"""

# KEYS[1] = lease key; ARGV[1] = value, ARGV[2] = ttl ms. 1 = renewed or re-taken, 0 = not ours.
_RENEW = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS[1] = lease key, KEYS[2] = replay record key; ARGV[1] = value, ARGV[2] = record or '',
# ARGV[3] = replay ttl ms. 1 = released, 0 = not ours (nothing changed).
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] ~= '' and tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
end
redis.call('DEL', KEYS[1])
return 1
"""


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _safe_url(url: str) -> str:
    """``url`` without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


class RedisJobStore(JobStore):
    """Redis store shared by every worker process and host that uses the same Redis.

    :param url: a ``redis://``, ``rediss://`` or ``unix://`` URL.
    :param prefix: prepended to every key. Keys are ``<prefix>{<job id>}:lease`` and
        ``<prefix>{<job id>}:done`` (the braces keep both in one Redis Cluster slot).
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
                f"DIAGLOG_JOB_STORE={_safe_url(url)!r} needs the 'redis' package, which is not "
                "installed: pip install 'flask-diaglog[redis]' (or set DIAGLOG_JOB_STORE=memory "
                "for a single process)"
            ) from exc
        self.url = _safe_url(url)
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
        self.client = client
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def _keys(self, job_id: str) -> list[str]:
        base = f"{self.prefix}{{{job_id}}}"
        return [base + ":lease", base + ":done"]

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
        keys = self._keys(job_id)[:1]
        return bool(self._run(self._renew, keys=keys, args=[value, _ms(ttl)]))

    def release(
        self, job_id: str, value: str, record: str | None = None, replay_ttl: float = 0.0
    ) -> bool:
        args = [value, record or "", _ms(replay_ttl) if replay_ttl > 0 else 0]
        return bool(self._run(self._release, keys=self._keys(job_id), args=args))

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
