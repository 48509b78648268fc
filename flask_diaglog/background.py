"""Background work: running a callable as a job of a request, with its ``job_start`` and
``job_end`` lines, its own :class:`~flask_diaglog.context.Trace` and the job guard's lease.

``DiagLog.spawn``/``DiagLog.wrap`` and the task-queue integrations run work through
:func:`run_job`; :func:`job_end` is the one builder of a ``job_end`` record, so a failed job
carries the same fields as a successful one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .context import Lease, Trace, reset_trace, set_trace
from .trail import job_end_msg, job_start_msg

if TYPE_CHECKING:
    from flask import Flask

    from .record import Recorder

__all__ = ["job_end", "release_unused", "run_job"]

R = TypeVar("R")
_INFO = logging.INFO
_ERROR = logging.ERROR


def release_unused(held: list[Lease | None]) -> None:
    lease, held[0] = held[0], None
    if lease is not None:
        lease.release()


def run_job(
    rec: Recorder | None,
    app: Flask | None,
    parent: Trace | None,
    lease: Lease | None,
    name: str,
    fn: Callable[..., R],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> R:
    job = Trace(
        rec,
        "job",
        parent.request_id if parent else None,
        parent.job_id if parent else None,
        parent.method if parent else None,
        parent.path if parent else None,
    )
    job.lease = lease
    token = set_trace(job)
    app_ctx = app.app_context() if app is not None else None
    if app_ctx is not None:
        app_ctx.push()
    try:
        if rec is None:
            return fn(*args, **kwargs)
        rec.record("job_start", job, _INFO, job_start_msg(name), {"name": name})
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            job_end(rec, job, name, exc)
            raise
        job_end(rec, job, name, None)
        return result
    finally:
        try:
            if lease is not None:
                lease.release()
        finally:
            if app_ctx is not None:
                app_ctx.pop()
            reset_trace(token)


def job_end(rec: Recorder, job: Trace, name: str, exc: BaseException | None) -> None:
    """The ``job_end`` line: the same fields whether the job succeeded or failed."""
    ms = job.elapsed_ms()
    totals = job.stage_totals() or None
    ok = exc is None
    error = rec.error_text(exc) if exc is not None else None
    rec.record(
        "job_end",
        job,
        _INFO if ok else _ERROR,
        job_end_msg(name, ok, ms, totals, error=error, hung=job.hung),
        {
            "name": name,
            "duration_ms": round(ms, 3),
            "ok": ok,
            "error": error,
            "stages": totals,
            "hung": job.hung or None,
        },
        exc=rec.format_exc(exc) if exc is not None else None,
    )
