"""RQ: ``init_rq(app)`` and the :class:`Queue`, :class:`Job` and :class:`Worker` classes that
carry the trail and the job guard's lease into ``rq worker`` processes.

* :class:`Queue` puts the diaglog headers (:mod:`.common`) in ``job.meta`` of every job enqueued
  during a request or a job; from a guarded request the job's lease is handed off to it. A job
  enqueued with ``retry=Retry(max=...)`` also gets ``diaglog_attempts`` (``max + 1``), so each
  run knows its attempt number.
* :class:`Job` runs the job's function as a diaglog job (:func:`~.common.run_task`), holding the
  lease, in the work horse: ``job_start`` and ``job_end`` carry ``task_id``, ``attempt``,
  ``attempts`` and ``queue``. A failed run that RQ will retry writes a WARNING line naming the
  next attempt and leaves the lease to it; the last attempt's end frees it. A run stopped by its
  ``job_timeout`` ends with its ``job_end`` (``JobTimeoutException``). :meth:`Job.cancel` writes
  a line (``outcome`` ``cancelled``) and frees the lease of a job that had not started.
* :class:`Worker` uses :class:`Job` by default, checks the configuration when it starts
  (exiting with a message naming what to set), sends what its live emitter holds before a work
  horse exits, and writes the last line of a job whose work horse ended without finishing it
  (``outcome`` ``stopped`` for ``send_stop_job_command``, ``killed`` otherwise), freeing its
  lease unless RQ retries it. RQ's own line about a failed job carries the job's diaglog ids.

The worker imports the module that calls ``init_rq(app)`` through ``rq worker -c <module>``::

    rq worker -c tasks_app -w flask_diaglog.workers.rq.Worker
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask
from rq import Queue as _Queue
from rq import Worker as _Worker
from rq.job import Job as _Job
from rq.job import JobStatus

from ..config import ConfigError
from ..context import current_trace, trace_current
from ..linecheck import finite_number
from .common import (
    Binding,
    TaskInfo,
    bad_header,
    binding,
    end_outside,
    fail_startup,
    job_of,
    note,
    outgoing_headers,
    parent_from,
    run_task,
)
from .common import start_worker as _start
from .lease import Holding

__all__ = ["ATTEMPTS", "Job", "Queue", "Worker", "init_rq"]

#: The ``job.meta`` key of the number of runs RQ makes of a job (``Retry(max=n)``: ``n + 1``).
ATTEMPTS = "diaglog_attempts"

_WARNING = logging.WARNING
_ERROR = logging.ERROR

#: The Flask app of this process's RQ jobs (one per process, as RQ has no app object).
_binding: list[Binding] = []


def init_rq(app: Flask) -> None:
    """Make RQ jobs of this process use the diaglog of ``app`` (call ``DiagLog(app)`` first).

    Call it in the module the web app and ``rq worker -c <module>`` import, and enqueue with
    :class:`Queue`.

    .. versionadded:: 0.3
    """
    _binding[:] = [binding(app)]


def _current() -> Binding | None:
    return _binding[0] if _binding else None


def _whole(value: Any) -> bool:
    """A whole number a float holds (not a boolean, not thousands of digits long)."""
    return type(value) is int and finite_number(value)


class Job(_Job):
    """An RQ job that runs its function as a diaglog job."""

    def _bad_attempts(self) -> str | None:
        """What is wrong with ``diaglog_attempts`` in the job's meta (a whole number from 1), or
        ``None``."""
        attempts = (self.meta or {}).get(ATTEMPTS)
        if attempts is None or (_whole(attempts) and attempts > 0):
            return None
        return bad_header(ATTEMPTS, attempts, "is not a number of runs; its attempt is not known")

    def task_info(self, *, eager: bool = False) -> TaskInfo:
        """What this run is: its function, id, queue, and its attempt out of how many (from
        ``diaglog_attempts`` in its meta and RQ's ``retries_left``)."""
        attempts = (self.meta or {}).get(ATTEMPTS)
        if self._bad_attempts() is not None:
            attempts = None
        left = self.retries_left
        attempt = 1
        if attempts is not None and left is not None and 0 <= left < attempts:
            attempt = attempts - left
        return TaskInfo(self.func_name or "?", self.id, attempt, attempts, self.origin, eager)

    def perform(self) -> Any:
        """RQ's ``Job.perform`` (what the worker and a synchronous queue call), run as a diaglog
        job: its trail, the request's ids, its lease, its retries."""
        b = _current()
        if b is None or b.rec is None:
            return super().perform()
        rec = b.rec
        eager = current_trace() is not None
        info = self.task_info(eager=eager)
        execute = super().perform

        def retried(exc: BaseException, held: Holding | None = None) -> bool:
            return not eager and self.should_retry  # RQ runs it again, with the same meta

        def run() -> Any:
            try:
                return execute()
            except BaseException as exc:
                if retried(exc):
                    note(
                        rec,
                        _WARNING,
                        f"task {info.name} ({info.task_id}) will be retried in "
                        f"{self.get_retry_interval()}s as {info.next_attempt()}: "
                        f"{rec.error_text(exc)}",
                        task_id=info.task_id,
                        attempt=info.attempt + 1,
                    )
                raise

        def again(exc: BaseException) -> BaseException | None:
            return exc if retried(exc) else None

        meta = self.meta or {}
        bad = self._bad_attempts()
        return run_task(
            b, info, meta.get, run, (), {}, keep_lease=retried, retried=again,
            bad=() if bad is None or eager else (bad,),
        )  # fmt: skip

    def cancel(self, *args: Any, **kwargs: Any) -> Any:
        """Cancel the job (RQ's ``Job.cancel``) and end its trail with a line in this process's
        ``jobs.log`` (``outcome`` ``cancelled``). A job that had not started gives its lease
        up; a running one keeps it until its run ends."""
        b = _current()
        started = b is not None and self.get_status(refresh=True) == JobStatus.STARTED
        result = super().cancel(*args, **kwargs)
        if b is not None:
            what = "was cancelled while it ran" if started else "was cancelled before it ran"
            meta = self.meta or {}
            end_outside(
                b, self.func_name or "?", self.id, meta.get, what, "cancelled", _WARNING,
                free=not started,
            )  # fmt: skip
        return result


class Queue(_Queue):
    """An RQ queue of :class:`Job`, whose jobs carry the diaglog headers in ``job.meta``."""

    job_class = Job

    def create_job(self, *args: Any, **kwargs: Any) -> Any:
        job = super().create_job(*args, **kwargs)
        if _current() is not None and self.is_async:
            job.meta.update(outgoing_headers(current_trace()))
            if job.retries_left is not None:
                job.meta[ATTEMPTS] = job.retries_left + 1
        return job


class Worker(_Worker):
    """An RQ worker that runs :class:`Job` by default, checks the configuration at startup,
    sends the live events of each job before its work horse exits, and ends the trail of a job
    whose work horse died."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("job_class") in (None, _Job):
            kwargs["job_class"] = Job
        super().__init__(*args, **kwargs)

    def work(self, *args: Any, **kwargs: Any) -> bool:
        b = _current()
        if b is None:
            fail_startup(
                ConfigError(
                    "flask-diaglog: this RQ worker has no Flask app: call init_rq(app) in the "
                    "module the worker imports (rq worker -c <module>)"
                )
            )
        else:
            try:
                _start(b, "RQ worker")
            except ConfigError as exc:
                fail_startup(exc)
        return bool(super().work(*args, **kwargs))

    def perform_job(self, *args: Any, **kwargs: Any) -> bool:
        try:
            return bool(super().perform_job(*args, **kwargs))
        finally:
            b = _current()
            if b is not None:
                b.flush()  # a work horse exits with os._exit: nothing runs after this

    def handle_exception(self, job: Any, *exc_info: Any) -> None:
        """RQ logs a failed job with ``extra={"job_id": <RQ's id>}``, which a log line would
        take for the diaglog job id: the line is written inside the job's trail instead, with
        the ids of the request that enqueued it (RQ's id stays in RQ's words)."""
        b = _current()
        if b is None or b.rec is None:
            super().handle_exception(job, *exc_info)
            return
        parent, _problems = parent_from((job.meta or {}).get)
        with trace_current(job_of(b.rec, parent)):
            super().handle_exception(job, *exc_info)

    def handle_job_failure(self, job: Any, queue: Any, *args: Any, **kwargs: Any) -> None:
        b = _current()
        if b is not None and not self.is_horse:
            self._ended_outside(b, job, str(kwargs.get("exc_string") or ""))
        super().handle_job_failure(job, queue, *args, **kwargs)

    def _ended_outside(self, b: Binding, job: Any, why: str) -> None:
        """The work horse ended without finishing the job (stopped on request, killed, lost):
        the main process writes its last line, and frees its lease unless RQ retries it."""
        stopped = getattr(self, "_stopped_job_id", None) == job.id
        retry = bool(job.should_retry) and not stopped
        info = job.task_info() if isinstance(job, Job) else TaskInfo(job.func_name, job.id)
        if stopped:
            what, outcome, level = "was stopped: its work horse was killed", "stopped", _WARNING
        else:
            why = why.strip().rstrip(";").rstrip()  # RQ ends its reason with "; "
            what = f"ended outside its run: {why}" if why else "ended outside its run"
            outcome, level = "killed", _ERROR
        if retry:
            what += f"; RQ retries it as {info.next_attempt()}"
        meta = job.meta or {}
        end_outside(b, info.name, job.id, meta.get, what, outcome, level, free=not retry)
