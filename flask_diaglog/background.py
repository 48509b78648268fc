"""Background work: running a callable as a job of a request, with its ``job_start`` and
``job_end`` lines, its own :class:`~flask_diaglog.context.Trace` and the job guard's lease; and
what happens to running jobs when the process stops.

``DiagLog.spawn``/``DiagLog.wrap`` and the task-queue integrations run work through
:func:`run_job`; :func:`job_end` is the one builder of a ``job_end`` record, so a failed job
carries the same fields as a successful one.

**Shutdown.** Every running job is known to one process-wide :class:`Running` set. When the
interpreter stops (Ctrl-C, ``sys.exit``, a gunicorn worker's graceful exit, SIGTERM under a
server that has no handler of its own), it waits up to ``DIAGLOG_SHUTDOWN_GRACE`` seconds for
them, before Python joins its threads. It waits as long for the requests that daemon threads are
serving (``flask run``'s), which Python would end without a word. A job or request still running
then gets its end line marked ``aborted`` (a job's names the stage it was in), the console is
given its queued lines, and the process exits (status 1) instead of waiting for it for ever.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .context import Lease, Trace, reset_trace, set_trace
from .files.console import flush_all
from .stacks import thread_frames
from .trail import job_end_msg, job_start_msg

if TYPE_CHECKING:
    from flask import Flask

    from .record import Recorder

__all__ = ["Running", "install_sigterm", "job_end", "release_unused", "run_job", "running"]

R = TypeVar("R")
_INFO = logging.INFO
_ERROR = logging.ERROR
_WARNING = logging.WARNING
#: Most seconds a stopping process waits, after the requests it waited for have their end lines,
#: for the threads that serve them to send their answers (the server sends a response after
#: diaglog's end line), and for those that were sending one when it began to stop.
RESPONSE_SETTLE = 1.0


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


class Requests(Protocol):
    """What shutdown needs of an app's request trail (:class:`~flask_diaglog.wsgi.RequestTrail`):
    its recorder (the registry of what is in flight, the grace) and how to end a request."""

    rec: Recorder

    def finish(self, trace: Trace, exc: BaseException | None, aborted: bool = False) -> None: ...


class Running:
    """The jobs running in this process, and the wait for them (and for requests served by
    daemon threads) at interpreter shutdown."""

    def __init__(self) -> None:
        self._jobs: set[_Job] = set()
        self._cond = threading.Condition()
        self._hooked = False
        self._trails: weakref.WeakSet[Any] = weakref.WeakSet()

    def serve(self, trail: Requests) -> None:
        """Wait at shutdown for ``trail``'s requests that daemon threads serve too."""
        self._trails.add(trail)

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

    def _served(self) -> list[tuple[Requests, Trace]]:
        """Requests in flight on daemon threads other than this one: Python ends those threads
        at exit without waiting (werkzeug's development server serves each request in one)."""
        me = threading.get_ident()
        daemons = {t.ident for t in threading.enumerate() if t.daemon and t.ident != me}
        out: list[tuple[Requests, Trace]] = []
        if daemons:
            for trail in list(self._trails):
                registry = trail.rec.registry
                if registry is not None:
                    out.extend(
                        (trail, t)
                        for t in registry.traces()
                        if t.kind == "request" and t.thread in daemons
                    )
        return out

    def shutdown(self) -> None:
        """Wait for running jobs, and for requests that daemon threads serve, up to the longest
        grace of their apps; then write an aborted end line for each one left, and leave without
        waiting for them."""
        with self._cond:
            jobs = list(self._jobs)
        served = self._served()
        answering = _answering() if self._trails else set()
        if not jobs and not served and not answering:
            return
        recs = [job.rec for job in jobs] + [trail.rec for trail, _ in served]
        grace = max(rec.shutdown_grace for rec in recs or [t.rec for t in list(self._trails)])
        deadline = time.monotonic() + grace
        while True:
            left = deadline - time.monotonic()
            with self._cond:
                if left <= 0 or not (self._jobs or served):
                    jobs = list(self._jobs)
                    break
                # A job's end notifies; a request's does not: look again every 50 ms.
                self._cond.wait(min(left, 0.05) if served else left)
            served = self._served()
            answering.update(trace.thread for _, trace in served)
        served = self._served()  # as late as possible: a request that ended has its own line
        if answering and not served:  # they ended: let their threads send the responses
            until = min(deadline, time.monotonic() + RESPONSE_SETTLE)
            while answering & _answering() and time.monotonic() < until:
                time.sleep(0.01)
        aborted = 0
        for job in jobs:
            with job.lock:
                if job.ended:
                    continue
                job.ended = True
                aborted += 1
                _aborted_end(job)
        for trail, trace in served:
            aborted += 1
            try:
                trail.finish(trace, None, aborted=True)
            except Exception as e:  # the others still get theirs, and the process still exits
                trail.rec.failed("shutdown", e)
        if aborted:
            try:
                flush_all()  # the console's queued lines: the aborted ones above among them
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(1)  # the jobs' threads would keep the process alive for ever


#: Where werkzeug's server answers one request, from its parsed request line to the last byte
#: of its response: a daemon thread in it has a request to finish (or an answer to send).
_SERVING = (os.path.join("werkzeug", "serving.py"), "run_wsgi")


def _answering() -> set[int]:
    """The daemon threads other than this one that are answering a request in werkzeug's server
    (``flask run``): Python ends them at exit, mid-answer, without waiting. One waiting for a
    keep-alive connection's next request is not in the set."""
    me = threading.get_ident()
    daemons = {t.ident for t in threading.enumerate() if t.daemon and t.ident != me}
    if not daemons:
        return set()
    out: set[int] = set()
    frames = thread_frames()
    try:
        for ident, frame in frames.items():
            f: FrameType | None = frame if ident in daemons else None
            while f is not None:
                code = f.f_code
                if code.co_name == _SERVING[1] and code.co_filename.endswith(_SERVING[0]):
                    out.add(ident)
                    break
                f = f.f_back
    finally:
        del frames  # frames reference every thread's locals: do not keep them
    return out


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
    rec.close(job)  # out of the registry before job.hung is read: see Recorder.close
    ms = job.elapsed_ms()
    totals, word = job.totals_and_word()
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
