"""Job records of the example app: the uploaded image, status, stage, progress and result.

Two backends behind one interface (:class:`JobStore`), chosen by :func:`open_store` from a URL:

* ``memory``: records in this process (the default, so ``make demo`` needs no Redis). Under
  ``gunicorn -w N`` each worker would see only its own uploads.
* ``redis://``, ``rediss://`` or ``unix://``: records in Redis, visible to every worker process
  (and to a task-queue worker). ``create_app`` uses the same URL as ``DIAGLOG_JOB_STORE``, so one
  setting makes both the 409 guard and the job records shared.

A real service would keep these in its database; the interface is what the views and the
pipeline need, nothing more.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Protocol, cast

__all__ = ["JobStore", "MemoryStore", "RedisStore", "open_store"]

#: Seconds a job's records stay in Redis after their last write.
RECORD_TTL = 24 * 3600


def new_record(job_id: str, info: dict[str, Any], owner: str | None = None) -> dict[str, Any]:
    """The record of a freshly uploaded image; ``owner``: who may follow it live (the uploading
    browser session's viewer id, see ``live_page.py``)."""
    return {
        "job_id": job_id,
        "owner": owner,
        "status": "uploaded",
        "stage": None,
        "progress": None,
        "image": info,
        "created": time.time(),
        "error": None,
        "result": None,
    }


class JobStore(Protocol):
    """What the views and the pipeline need from job records."""

    def create(
        self, job_id: str, data: bytes, info: dict[str, Any], owner: str | None = None
    ) -> dict[str, Any]:
        """Store a new upload; returns its record."""

    def get(self, job_id: str) -> dict[str, Any] | None:
        """A copy of the record, or None for an unknown job."""

    def image(self, job_id: str) -> bytes:
        """The uploaded image. ``KeyError`` for an unknown job."""

    def update(self, job_id: str, **changes: Any) -> None:
        """Change fields of an existing record. ``KeyError`` for an unknown job."""

    def finish(self, job_id: str, obj: str, stats: dict[str, int]) -> None:
        """Store the result and mark the job done."""

    def result(self, job_id: str) -> str | None:
        """The finished mesh (OBJ text), or None."""

    def close(self) -> None:
        """Release connections."""


class MemoryStore:
    """Thread-safe records in this process's memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, dict[str, Any]] = {}
        self._images: dict[str, bytes] = {}
        self._results: dict[str, str] = {}

    def create(
        self, job_id: str, data: bytes, info: dict[str, Any], owner: str | None = None
    ) -> dict[str, Any]:
        record = new_record(job_id, info, owner)
        with self._lock:
            self._jobs[job_id] = record
            self._images[job_id] = data
            return dict(record)

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            record = self._jobs.get(job_id)
            return dict(record) if record is not None else None

    def image(self, job_id: str) -> bytes:
        with self._lock:
            return self._images[job_id]

    def update(self, job_id: str, **changes: Any) -> None:
        with self._lock:
            self._jobs[job_id].update(changes)

    def finish(self, job_id: str, obj: str, stats: dict[str, int]) -> None:
        with self._lock:
            self._results[job_id] = obj
            self._jobs[job_id].update(status="done", stage=None, result=stats)

    def result(self, job_id: str) -> str | None:
        with self._lock:
            return self._results.get(job_id)

    def close(self) -> None:
        pass


# HSET the given field/value pairs only if the record exists (an update never creates a torn,
# partial record), and refresh the TTL of the job's keys.
_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], tonumber(ARGV[1])) end
return 1
"""


class RedisStore:
    """Records in Redis, shared by every process that opens the same URL.

    A record is a hash whose fields hold JSON values (``example:{<job id>}``), so updating one
    field never overwrites another written by a different process. The image and the result are
    plain keys beside it; all three expire :data:`RECORD_TTL` seconds after their last write.
    """

    def __init__(self, url: str, *, ttl: int = RECORD_TTL) -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._ttl = ttl
        self._update = self._redis.register_script(_UPDATE)

    @staticmethod
    def _keys(job_id: str) -> tuple[str, str, str]:
        base = f"example:{{{job_id}}}"  # braces: one Redis Cluster slot per job
        return base, f"{base}:image", f"{base}:result"

    def create(
        self, job_id: str, data: bytes, info: dict[str, Any], owner: str | None = None
    ) -> dict[str, Any]:
        record = new_record(job_id, info, owner)
        key, image, _ = self._keys(job_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(image, data, ex=self._ttl)
        pipe.hset(key, mapping={k: json.dumps(v) for k, v in record.items()})
        pipe.expire(key, self._ttl)
        pipe.execute()
        return record

    def get(self, job_id: str) -> dict[str, Any] | None:
        raw = cast(dict[bytes, bytes], self._redis.hgetall(self._keys(job_id)[0]))
        if not raw:
            return None
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def image(self, job_id: str) -> bytes:
        data = cast(bytes | None, self._redis.get(self._keys(job_id)[1]))
        if data is None:
            raise KeyError(job_id)
        return data

    def update(self, job_id: str, **changes: Any) -> None:
        key, image, result = self._keys(job_id)
        args: list[Any] = [self._ttl]
        for name, value in changes.items():
            args += [name, json.dumps(value)]
        if not self._update(keys=[key, image, result], args=args):
            raise KeyError(job_id)

    def finish(self, job_id: str, obj: str, stats: dict[str, int]) -> None:
        self._redis.set(self._keys(job_id)[2], obj.encode(), ex=self._ttl)
        self.update(job_id, status="done", stage=None, result=stats)

    def result(self, job_id: str) -> str | None:
        obj = cast(bytes | None, self._redis.get(self._keys(job_id)[2]))
        return None if obj is None else obj.decode()

    def close(self) -> None:
        self._redis.close()


def open_store(url: str) -> JobStore:
    """``memory`` gives a :class:`MemoryStore`; a Redis URL a :class:`RedisStore` on it."""
    if url == "memory":
        return MemoryStore()
    return RedisStore(url)
