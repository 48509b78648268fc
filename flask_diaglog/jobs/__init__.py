"""The duplicate-job guard: ``@guard_job``, its leases, and the stores that hold them.

:mod:`.guard` has the per-app :class:`JobGuard` and the decorator, :mod:`.leases` the leases and
their renewal, :mod:`.stores` the memory and Redis stores (:mod:`.scripts` the Redis scripts),
:mod:`.replay` the stored responses, and :mod:`.handoff` the hand-off of a job to a task queue
worker (:func:`hand_off` in the view, :func:`adopt` on the worker). The problem+json answers live
in :mod:`flask_diaglog.problems`.
"""

from __future__ import annotations

from ..problems import (
    DuplicateJob,
    IdempotencyKeyMismatch,
    JobIdRequired,
    JobIdUnreadable,
    JobStoreUnavailable,
)
from .guard import JobGuard, get_job_guard, guard_job
from .handoff import HandOffError, abandon, adopt, hand_off
from .leases import JobLease
from .stores import JobStore, JobStoreError, MemoryJobStore, RedisJobStore, make_store

__all__ = [
    "DuplicateJob",
    "HandOffError",
    "IdempotencyKeyMismatch",
    "JobGuard",
    "JobIdRequired",
    "JobIdUnreadable",
    "JobLease",
    "JobStore",
    "JobStoreError",
    "JobStoreUnavailable",
    "MemoryJobStore",
    "RedisJobStore",
    "abandon",
    "adopt",
    "get_job_guard",
    "guard_job",
    "hand_off",
    "make_store",
]
