"""RQ: ``init_rq(app)`` and the :class:`Queue`, :class:`Job` and :class:`Worker` classes that
carry the trail and the job guard's lease into ``rq worker`` processes.

* :class:`Queue` puts the diaglog headers (:mod:`.common`) in ``job.meta`` of every job enqueued
  during a request or a job; from a guarded request the job's lease is handed off to it.
* :class:`Job` runs the job's function as a diaglog job (:func:`~.common.run_task`), holding the
  lease, in the work horse.
* :class:`Worker` uses :class:`Job` by default, checks the configuration when it starts
  (exiting with a message naming what to set), and sends what its live emitter holds before a
  work horse exits.

The worker imports the module that calls ``init_rq(app)`` through ``rq worker -c <module>``::

    rq worker -c tasks_app -w flask_diaglog.workers.rq.Worker
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from rq import Queue as _Queue
from rq import Worker as _Worker
from rq.job import Job as _Job

from ..config import ConfigError
from ..context import current_trace
from .common import Binding, TaskInfo, binding, fail_startup, outgoing_headers, run_task
from .common import start_worker as _start

__all__ = ["Job", "Queue", "Worker", "init_rq"]

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


class Queue(_Queue):
    """An RQ queue whose jobs carry the diaglog headers in ``job.meta``."""

    def create_job(self, *args: Any, **kwargs: Any) -> Any:
        job = super().create_job(*args, **kwargs)
        if _current() is not None and self.is_async:
            job.meta.update(outgoing_headers(current_trace()))
        return job


class Job(_Job):
    """An RQ job that runs its function as a diaglog job."""

    def _execute(self) -> Any:
        b = _current()
        if b is None:
            return super()._execute()
        info = TaskInfo(
            self.func_name or "?",
            self.id,
            queue=self.origin,
            eager=current_trace() is not None,
        )
        meta = self.meta or {}
        return run_task(b, info, meta.get, super()._execute, (), {})


class Worker(_Worker):
    """An RQ worker that runs :class:`Job` by default, checks the configuration at startup,
    and sends the live events of each job before its work horse exits."""

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
