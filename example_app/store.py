"""In-memory job records (a real service would use a database)."""

from __future__ import annotations

import threading
import time
from typing import Any


class JobStore:
    """Thread-safe job records: the uploaded image, status, current stage and result."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, dict[str, Any]] = {}
        self._images: dict[str, bytes] = {}
        self._results: dict[str, str] = {}

    def create(self, job_id: str, data: bytes, info: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            record = {
                "job_id": job_id,
                "status": "uploaded",
                "stage": None,
                "image": info,
                "created": time.time(),
                "error": None,
                "result": None,
            }
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
