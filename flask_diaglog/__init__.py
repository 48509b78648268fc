"""flask-diaglog: request diagnostics for Flask.

``DiagLog(app)`` gives every request a correlated trail (start, stages, end or error) in crash-safe
rotating log files, a ``Server-Timing`` header, and events for signals and live views.
"""

from __future__ import annotations

from . import signals
from .config import ConfigError, is_testing
from .context import current_job_id, current_request_id
from .extension import DiagLog, inflight, stats
from .jobs import (
    DuplicateJob,
    HandOffError,
    IdempotencyKeyMismatch,
    JobIdRequired,
    JobIdUnreadable,
    JobStoreUnavailable,
    MemoryJobStore,
    RedisJobStore,
    abandon,
    adopt,
    guard_job,
    hand_off,
)
from .logbridge import DiagLogHandler
from .problems import InvalidJobId, ProblemError
from .progress import progress, set_job_id
from .record import Event
from .timing import get_request_timings, stage, timed_stage

__all__ = [
    "ConfigError",
    "DiagLog",
    "DiagLogHandler",
    "DuplicateJob",
    "Event",
    "HandOffError",
    "IdempotencyKeyMismatch",
    "InvalidJobId",
    "JobIdRequired",
    "JobIdUnreadable",
    "JobStoreUnavailable",
    "MemoryJobStore",
    "ProblemError",
    "RedisJobStore",
    "abandon",
    "adopt",
    "current_job_id",
    "current_request_id",
    "get_request_timings",
    "guard_job",
    "hand_off",
    "inflight",
    "is_testing",
    "progress",
    "set_job_id",
    "signals",
    "stage",
    "stats",
    "timed_stage",
]

__version__ = "0.2.0"
