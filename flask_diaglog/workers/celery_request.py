"""Celery's worker: which task a line of Celery's own, or a task Celery sends, is about, so they
carry that task's ids.

Celery writes lines about a task outside its run, most of them in the worker's main process:
``Task ... received``, billiard's ``Process 'ForkPoolWorker-1' pid:... exited with 'signal 9
(SIGKILL)'``, ``Task handler raised error: WorkerLostError(...)``, ``Task ... retry: ...``,
``Hard time limit (1s) exceeded for ...``, ``Discarding revoked task ...``, ``Terminating <task
id> (15)``; and ``Task ... succeeded`` or ``raised unexpected`` in the process that ran it, after
the run. From the main process it also sends tasks on a task's behalf: its retry when its pool
process died (``retry_on_worker_lost``), its error callbacks.

This module owns:

* :class:`DiagLogRequest`, the worker's request class for the tasks of an app set up with
  ``init_celery``: it registers each request by task id (:func:`registered`) and notes the
  request whose end the main process is handling (:func:`handling`) while it does;
* :class:`TaskIds`, the filter put on Celery's (and billiard's) loggers at worker start: a line
  about a task gets the request id and job id of the request that sent it, read from the task's
  headers (:func:`headers_of`).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from celery import current_task
from celery.worker.request import Request
from celery.worker.state import active_requests

from ..context import current_trace
from .common import header_getter, parent_from

__all__ = ["LOGGERS", "DiagLogRequest", "TaskIds", "handling", "headers_of", "register"]

#: The loggers whose lines about a task get its ids (``multiprocessing`` is billiard's).
LOGGERS = (
    "celery.app.trace",
    "celery.worker.control",
    "celery.worker.request",
    "celery.worker.strategy",
    "multiprocessing",
)

#: billiard's line about a pool process that exited abnormally (name, pid, status).
_EXITED = "Process %r pid:%r exited with %r"
#: Celery's lines that name one task by its id only, and where: the index of the id argument.
_ID_ARG = {
    "Terminating %s (%s)": 0,
    "Failed to mark task %s as revoked in backend: %s": 0,
}

_handling: ContextVar[Any] = ContextVar("flask_diaglog_celery_request", default=None)
#: The worker's requests, by task id (a redelivered message: its newest request).
_by_id: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()


def register(request: Any) -> None:
    """Know ``request`` (a Celery worker request) by its task id, while it is alive."""
    _by_id[request.id] = request


def registered(task_id: str) -> Any:
    """The worker's request of ``task_id``, if it is known and alive."""
    return _by_id.get(task_id)


def handling() -> Any:
    """The request whose end (failure, lost pool process, time limit, revocation) the worker's
    main process is handling in this context, or ``None``."""
    return _handling.get()


def headers_of(request: Any) -> Callable[[str], Any]:
    """``get(name)`` over the message headers of a Celery worker request."""
    d = request.request_dict
    return header_getter(d.get("headers") or {}, d)


@contextmanager
def _handled(request: Any) -> Iterator[None]:
    token = _handling.set(request)
    try:
        yield
    finally:
        _handling.reset(token)


class DiagLogRequest(Request):  # type: ignore[misc]
    """The worker's request of a task of an app set up with ``init_celery``: while Celery's main
    process handles the task's end, what it logs and sends is known to be about this task.

    A task class with its own ``Request`` keeps it; deriving it from this class gives Celery's
    lines about its tasks their ids.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _by_id[self.id] = self

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> Any:
        with _handled(self):
            return super().on_failure(exc_info, send_failed_event, return_ok)

    def on_timeout(self, soft: bool, timeout: float) -> Any:
        with _handled(self):
            return super().on_timeout(soft, timeout)

    def revoked(self) -> bool:
        with _handled(self):
            return bool(super().revoked())


class TaskIds(logging.Filter):
    """A line of Celery's own about a task, written outside its run, gets the ids of the
    request that sent the task (from its headers); lines about no task, or about a task whose
    diaglog headers are missing or malformed, are left as they are. Never drops a line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if current_trace() is not None or getattr(record, "request_id", None) is not None:
            return True
        try:
            get = _about(record)
            if get is None:
                return True
            parent, problems = parent_from(get)
        except Exception:  # never in the way of Celery's own logging
            return True
        if not problems:
            record.request_id, record.job_id = parent.request_id, parent.job_id
        return True


def _about(record: logging.LogRecord) -> Callable[[str], Any] | None:
    """The headers of the task ``record`` is about, if it is about one."""
    req = _handling.get()
    if req is not None:
        return headers_of(req)
    if record.name == "multiprocessing":
        return _of_exited(record)
    task_id = _task_id(record)
    if task_id is None:
        return None
    running = current_task.request if current_task else None
    if running is not None and running.id == task_id:  # after its run, in its process
        return header_getter(getattr(running, "headers", None) or {}, vars(running))
    req = _by_id.get(task_id)
    return headers_of(req) if req is not None else None


def _task_id(record: logging.LogRecord) -> str | None:
    """The task id Celery gives a line: ``extra={"data": {...}}``, its ``%(id)s`` argument, or
    the argument of a known message (:data:`_ID_ARG`)."""
    data = getattr(record, "data", None)
    args = record.args
    if not isinstance(data, Mapping):
        data = args
    task_id = data.get("id") if isinstance(data, Mapping) else None
    if task_id is None and isinstance(args, tuple):
        at = _ID_ARG.get(record.msg) if isinstance(record.msg, str) else None
        task_id = args[at] if at is not None and len(args) > at else None
    return task_id if isinstance(task_id, str) else None


def _of_exited(record: logging.LogRecord) -> Callable[[str], Any] | None:
    """billiard's line about a pool process that exited: the task that process was running."""
    args = record.args
    if record.msg != _EXITED or not isinstance(args, tuple) or len(args) != 3:
        return None
    pid = args[1]
    for req in list(active_requests):
        if pid and getattr(req, "worker_pid", None) == pid:
            return headers_of(req)
    return None
