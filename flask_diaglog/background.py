"""Background work: running a callable as a job of a request, with its ``job_start`` and
``job_end`` lines, its own :class:`~flask_diaglog.context.Trace` and the job guard's lease; and
what happens to running jobs when the process stops.

``DiagLog.spawn``/``DiagLog.wrap`` and the task-queue integrations run work through
:func:`run_job`; :func:`job_end` is the one builder of a ``job_end`` record, so a failed job
carries the same fields as a successful one.

**Shutdown.** Every running job is known to one process-wide :class:`Running` set. When the
interpreter stops (Ctrl-C, ``sys.exit``, a gunicorn worker's graceful exit, SIGTERM under a
server that has no handler of its own), it waits up to ``DIAGLOG_SHUTDOWN_GRACE`` seconds for
them, before Python joins its threads. A job still running then gets a ``job_end`` line marked
``aborted``, naming the stage it was in, and the process exits (status 1) instead of waiting for
it for ever.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from .context import Lease, Trace, reset_trace, set_trace
from .trail import job_end_msg, job_start_msg

if TYPE_CHECKING:
    from flask import Flask

    from .record import Recorder

__all__ = ["Running", "install_sigterm", "job_end", "release_unused", "run_job", "running"]

R = TypeVar("R")
_INFO = logging.INFO
_ERROR = logging.ERROR
_WARNING = logging.WARNING


class _Job:
    __slots__ = ("ended", "fields", "lock", "name", "rec", "trace")

    def __init__(
        self, rec: Recorder, trace: Trace, name: str, fields: Mapping[str, Any] | None = None
    ) -> None:
        self.rec = rec
        self.trace = trace
        self.name = name
        self.fields = fields
        self.ended = False
        self.lock = threading.Lock()


class Running:
    """The jobs running in this process, and the wait for them at interpreter shutdown."""

    def __init__(self) -> None:
        self._jobs: set[_Job] = set()
        self._cond = threading.Condition()
        self._hooked = False

    def add(
        self, rec: Recorder, trace: Trace, name: str, fields: Mapping[str, Any] | None = None
    ) -> _Job:
        job = _Job(rec, trace, name, fields)
        with self._cond:
            self._jobs.add(job)
        if not self._hooked:  # read without the lock: hook() checks again under it
            self.hook()
        return job

    def hook(self) -> None:
        """Make the interpreter call :meth:`shutdown` when it stops (once). ``DiagLog`` calls
        this when it is set up, so that a job that starts as the process begins to stop is still
        waited for and then aborted: once the interpreter is stopping, no hook can be added."""
        with self._cond:
            if self._hooked:
                return
            self._hooked = True
        _at_shutdown(self.shutdown)

    def end(self, job: _Job) -> bool:
        """Mark ``job`` ended; False when shutdown already wrote its aborted line."""
        with job.lock:
            if job.ended:
                return False
            job.ended = True
        with self._cond:
            self._jobs.discard(job)
            self._cond.notify_all()
        return True

    def __len__(self) -> int:
        return len(self._jobs)

    def shutdown(self) -> None:
        """Wait for running jobs up to the longest grace of their apps; then write an aborted
        ``job_end`` for each one left, and leave without waiting for them."""
        with self._cond:
            jobs = list(self._jobs)
        if not jobs:
            return
        grace = max(job.rec.shutdown_grace for job in jobs)
        deadline = time.monotonic() + grace
        with self._cond:
            while self._jobs and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            jobs = list(self._jobs)
        aborted = 0
        for job in jobs:
            with job.lock:
                if job.ended:
                    continue
                job.ended = True
                aborted += 1
                _aborted_end(job)
        if aborted:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(1)  # the jobs' threads would keep the process alive for ever


_running: Running | None = None
_running_lock = threading.Lock()


def running() -> Running:
    """The process-wide set of running jobs (made on first use)."""
    global _running
    if _running is None:
        with _running_lock:
            if _running is None:
                _running = Running()
    return _running


def _at_shutdown(fn: Callable[[], None]) -> None:
    """Run ``fn`` when the interpreter stops, before it joins non-daemon threads."""
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        try:
            register(fn)
            return
        except RuntimeError:  # already shutting down
            return
    import atexit

    atexit.register(fn)


def install_sigterm() -> bool:
    """Make SIGTERM stop the process as Ctrl-C does (running the shutdown wait), when nobody
    else handles it: the main thread, and SIGTERM still at its default. True if installed."""
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return False
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):
        return False
    return True


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _aborted_end(job: _Job) -> None:
    job_end(job.rec, job.trace, job.name, None, job.fields, aborted=True)


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
    fields: Mapping[str, Any] | None = None,
    *,
    retried: Callable[[BaseException], BaseException | None] | None = None,
) -> R:
    """Run ``fn(*args, **kwargs)`` as a job of ``parent``: its own trace, its ``job_start`` and
    ``job_end`` lines, the app context of ``app``; ``lease`` is released when it ends.

    :param fields: more fields of its ``job_start`` and ``job_end`` lines (a task queue's
        ``task_id``, ``attempt``, ``attempts``, ``queue``); an ``attempt`` above 1 is also in the
        ``job_start`` message (``job_start name attempt=2``).
    :param retried: ``retried(exc)`` is the exception the run failed with when its task queue
        will run it again (``None`` otherwise): its ``job_end`` then says ``retried`` with that
        error, as a WARNING, instead of a failed job.
    """
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
        attempt = fields.get("attempt") if fields else None
        # Counted as running before its first line: a process that stops once the line is out
        # waits for the job and then aborts it, never neither.
        jobs = running()
        entry = jobs.add(rec, job, name, fields)
        rec.record(
            "job_start",
            job,
            _INFO,
            job_start_msg(name, attempt if isinstance(attempt, int) else None),
            {**(fields or {}), "name": name},
        )
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            if jobs.end(entry):
                again = retried(exc) if retried is not None else None
                job_end(rec, job, name, exc, fields, retried=again)
            raise
        if jobs.end(entry):
            job_end(rec, job, name, None, fields)
        return result
    finally:
        try:
            if lease is not None:
                lease.release()
        finally:
            if app_ctx is not None:
                app_ctx.pop()
            reset_trace(token)


def job_end(
    rec: Recorder,
    job: Trace,
    name: str,
    exc: BaseException | None,
    fields: Mapping[str, Any] | None = None,
    *,
    aborted: bool = False,
    retried: BaseException | None = None,
) -> None:
    """The ``job_end`` line: the same fields whether the job succeeded or failed (``fields``:
    those the job was started with, see :func:`run_job`). ``aborted``: the process is stopping
    while the job runs; the line says so and names the stage it was in. ``retried``: the run
    failed with this exception and its task queue runs it again (a WARNING ``retried`` line with
    ``retried: true``, not a failed job)."""
    ms = job.elapsed_ms()
    totals = job.stage_totals() or None
    word = job.stages_word()
    if retried is not None:
        exc = retried
    ok = exc is None and not aborted
    error = rec.error_text(exc) if exc is not None else None
    stage = None
    if aborted:
        stage = job.current_stage
        where = f"in stage {stage}" if stage else "outside any stage"
        error = f"Aborted: the process stopped while the job ran ({where})"
    rec.record(
        "job_end",
        job,
        _INFO if ok else _WARNING if retried is not None else _ERROR,
        job_end_msg(
            name,
            ok,
            ms,
            totals,
            error=error,
            hung=job.hung,
            aborted=aborted,
            word=word,
            retried=retried is not None,
        ),
        {
            **(fields or {}),
            "name": name,
            "duration_ms": round(ms, 3),
            "ok": ok,
            "error": error,
            "stages": totals,
            "hung": job.hung or None,
            "aborted": aborted or None,
            "retried": retried is not None or None,
            "stage": stage,
        },
        exc=rec.format_exc(exc) if exc is not None else None,
    )
