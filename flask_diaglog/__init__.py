"""flask-diaglog: request diagnostics for Flask.

``DiagLog(app)`` gives every request a correlated trail (start, stages, end or error) in crash-safe
rotating log files, a ``Server-Timing`` header, and events for signals and live views.
"""

from __future__ import annotations

from . import signals
from .config import ConfigError, is_testing
from .context import current_job_id, current_request_id
from .events import Event
from .extension import DiagLog, get_state
from .jobs import (
    DuplicateJob,
    IdempotencyKeyMismatch,
    JobIdRequired,
    JobStoreUnavailable,
    MemoryJobStore,
    RedisJobStore,
    guard_job,
)
from .logfiles import DiagLogHandler
from .problems import InvalidJobId, ProblemError
from .timing import get_request_timings, stage, timed_stage
from .watchdog import inflight

__all__ = [
    "ConfigError",
    "DiagLog",
    "DiagLogHandler",
    "DuplicateJob",
    "Event",
    "IdempotencyKeyMismatch",
    "InvalidJobId",
    "JobIdRequired",
    "JobStoreUnavailable",
    "MemoryJobStore",
    "ProblemError",
    "RedisJobStore",
    "current_job_id",
    "current_request_id",
    "get_request_timings",
    "get_state",
    "guard_job",
    "inflight",
    "is_testing",
    "signals",
    "stage",
    "timed_stage",
]

__version__ = "0.1.0"
