"""Celery: ``init_celery(celery_app, app)`` carries the trail, the job guard's lease and the live
stream into Celery workers.

In every process that imports it (web and worker alike, as Flask's Celery pattern has it):

* every task sent during a request or a job carries its ids, a ``traceparent`` and, from a
  guarded request, the job's lease in its message headers (``before_task_publish``);
* the app's base task class runs each task as a diaglog job (:func:`~.common.run_task`):
  ``job_start``, the task's stages and log records, ``job_end`` in the worker's ``jobs.log``
  with the sender's ids, holding the lease until the task ends;
* a retry writes a WARNING line with the next attempt; each run's ``job_start`` and ``job_end``
  carry ``task_id``, ``attempt``, ``attempts`` and ``queue`` (``job_start name attempt=2``);
* a task revoked, expired or killed by its hard time limit ends with a line written by the
  worker's main process (``outcome`` ``revoked``, ``expired`` or ``time_limit``), which also
  frees its lease: at once for a task that never ran, once its pool process has exited for a
  running one (:mod:`.terminate`, whose ``job_end`` says why it ended);
* a task whose pool process was killed from outside (SIGKILL, the OOM killer: Celery fails it
  with ``WorkerLostError``) ends with a line from the main process (``outcome`` ``killed``),
  which frees its lease first;
* a task whose pool process died and that Celery sends again from its main process
  (``retry_on_worker_lost``) keeps its ids and its part of the job, as a retry from its run
  does; error callbacks Celery sends from there carry the task's ids;
* at worker startup (``worker_init``) the configuration is checked, and a worker that lacks what
  it needs exits naming what to set; a live emitter is started when ``DIAGLOG_LIVE_QUEUE`` is
  set; Celery's own lines about a task get the sender's ids (:mod:`.celery_request`).
"""

from __future__ import annotations

import logging
import sys
import weakref
from collections import OrderedDict
from typing import Any

from celery import Celery, Task, current_task, signals
from celery.exceptions import (
    Retry,
    TimeLimitExceeded,
    WorkerLostError,
)
from celery.utils.imports import symbol_by_name
from flask import Flask

from ..config import ConfigError
from ..context import current_trace
from .celery_request import (
    LOGGERS,
    DiagLogRequest,
    TaskIds,
    handling,
    headers_of,
    register,
    registered,
)
from .common import (
    HEADERS,
    REQUEST_ID,
    Binding,
    TaskInfo,
    binding,
    end_outside,
    fail_startup,
    header_getter,
    lease_of,
    note,
    outgoing_headers,
    parent_from,
    run_task,
    start_worker,
)
from .lease import LEASE, Holding, current_holding, give_up
from .terminate import note_time_limit, share_notes, signal_name, terminated_exit, when_gone

__all__ = ["DiagLogTask", "init_celery"]

_WARNING = logging.WARNING
_ERROR = logging.ERROR

#: The Flask app (through its :class:`Binding`) of each Celery app set up in this process.
_bindings: weakref.WeakKeyDictionary[Any, Binding] = weakref.WeakKeyDictionary()
#: Main worker process: tasks with a hard time limit that were received, by task id, so the line
#: written when the limit kills one carries the ids of its headers. Bounded.
_limited: OrderedDict[str, Any] = OrderedDict()
_LIMITED_MAX = 10_000
#: Task runs being traced, by their request: what Celery sends after the run on its behalf (the
#: chain's next task, ``link`` callbacks) is sent from that run, which keeps its lease until
#: ``task_postrun``.
_after: weakref.WeakKeyDictionary[Any, Holding] = weakref.WeakKeyDictionary()


def init_celery(celery_app: Celery, app: Flask) -> None:
    """Connect ``celery_app`` to the diaglog of ``app`` (call ``DiagLog(app)`` first).

    Call it where the Celery app is created, before its tasks are defined or used, in the code
    both the web app and the worker import. It makes ``celery_app``'s base task class run every
    task as a diaglog job; a task with its own ``base=`` class gets it too when that class
    derives from ``celery_app.Task``.

    .. versionadded:: 0.3
    """
    b = binding(app)
    stale = [
        name
        for name, task in (celery_app.tasks.items() if celery_app.finalized else ())
        if not name.startswith("celery.") and not isinstance(task, DiagLogTask)
    ]
    if stale:
        raise RuntimeError(
            f"init_celery() came after these tasks were created: {', '.join(sorted(stale))}. "
            "Call it right after creating the Celery app, before the task modules are imported."
        )
    _bindings[celery_app] = b
    if celery_app.finalized and b.rec is not None:  # Celery's own tasks were made without us
        note(
            b.rec,
            _WARNING,
            "init_celery came after the Celery app was finalized: Celery's own tasks "
            "(celery.chord_unlock, which sends a chord's callback) run without diaglog, so a "
            "chord's callback gets fresh ids. Call init_celery right after creating the Celery app",
        )
    base = celery_app.Task
    if not issubclass(base, DiagLogTask):
        attrs = {"__module__": base.__module__}
        if base.Request != Task.Request:  # the app's own request class stays
            attrs["Request"] = base.Request
            if b.rec is not None and not _ours(base.Request):
                note(
                    b.rec,
                    _WARNING,
                    f"init_celery: the Celery app's Task.Request {base.Request!r} stays, and it "
                    "is not derived from flask_diaglog.workers.celery_request.DiagLogRequest: "
                    "Celery's own lines about a task will carry no ids, and a task run again "
                    "after its pool process died (retry_on_worker_lost) gets fresh ids and no "
                    "share of its job. Derive it from DiagLogRequest to keep them",
                )
        celery_app.Task = type("Task", (DiagLogTask, base), attrs)
    _connect()


def _ours(request_class: Any) -> bool:
    """Whether a task's ``Request`` (a class, or its ``module:name``) derives from
    :class:`~.celery_request.DiagLogRequest`."""
    found = _request_class(request_class)
    return found is not None and issubclass(found, DiagLogRequest)


def _request_class(value: Any, imported_only: bool = False) -> type | None:
    """A task's ``Request``: a class, or its ``module:name`` or ``module.name`` as Celery reads
    it; ``None`` when it cannot be told (not importable, or with ``imported_only`` not imported
    yet: then nothing is imported)."""
    try:
        found = symbol_by_name(value, imp=_already_imported if imported_only else None)
    except Exception:  # not importable here
        return None
    return found if isinstance(found, type) else None


def _already_imported(module: str, **_: Any) -> Any:
    try:
        return sys.modules[module]
    except KeyError:
        raise ImportError(module) from None


class DiagLogTask(Task):  # type: ignore[misc]
    """The mixin ``init_celery`` puts in front of a Celery app's base task class: each run is a
    diaglog job. Called directly (``task(...)``), a task stays a plain function call."""

    #: The worker's request class (:class:`~.celery_request.DiagLogRequest`).
    Request = "flask_diaglog.workers.celery_request:DiagLogRequest"

    @classmethod
    def on_bound(cls, app: Any) -> None:
        """A task with a ``Request`` of its own (``@app.task(Request=...)``), other than its app's
        base class's (:func:`init_celery` says about that one), is warned about when that class
        is not derived from :class:`~.celery_request.DiagLogRequest`. Only a class, or a name of one
        already imported, is judged: binding never imports anything."""
        super().on_bound(app)
        b = _bindings.get(app)
        if (
            b is None
            or b.rec is None
            or cls.Request == app.Task.Request
            or "_noted" in cls.__dict__
        ):
            return  # (Celery binds a task class again when the app finalizes: once is enough)
        own = _request_class(cls.Request, imported_only=True)
        if own is not None and not issubclass(own, DiagLogRequest):
            cls._noted = True
            note(
                b.rec,
                _WARNING,
                f"Celery task {cls.name}: its Request {own.__module__}.{own.__qualname__} is not "
                "derived from flask_diaglog.workers.celery_request.DiagLogRequest: Celery's own "
                "lines about it will carry no ids, and a run again after its pool process died "
                "(retry_on_worker_lost) gets fresh ids and no share of its job",
            )

    def apply_async(
        self, args: Any = None, kwargs: Any = None, task_id: Any = None, **options: Any
    ) -> Any:
        """Send the task with the diaglog headers of the current request or job. From a
        guarded request the job is handed off to it; a job store outage then raises the guard's
        503 (``JobStoreUnavailable``) before anything is sent."""
        if self.app in _bindings and not self.app.conf.task_always_eager:
            headers = dict(options.get("headers") or {})
            headers.pop(LEASE, None)  # a retry copies its request's headers: never a stale token
            sent_as = task_id or options.get("task_id")
            resent = _resent(sent_as)
            if resent is not None:
                headers.update(resent)
            else:
                trace, held = _sender()
                headers.update(outgoing_headers(trace, task_id=sent_as, held=held))
            options["headers"] = headers
        return super().apply_async(args, kwargs, task_id, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        inner = self.run if _plain_call(type(self)) else super().__call__
        b = _bindings.get(self.app)
        req = self.request
        if b is None or b.rec is None or req.called_directly:
            return inner(*args, **kwargs)
        attempt = (req.retries or 0) + 1
        limit = self.max_retries
        info = TaskInfo(
            self.name,
            req.id,
            attempt,
            limit + 1 if isinstance(limit, int) else None,
            (req.delivery_info or {}).get("routing_key"),
            bool(req.is_eager),
        )
        rec = b.rec

        def task(*a: Any, **kw: Any) -> Any:
            held = current_holding()
            if held is not None and req not in _after:
                # Celery sends the chain's next task and the link callbacks after the run
                # returns: they get its ids and a part of its job, which it keeps until then.
                held.lingers, held.trace = True, current_trace()
                _after[req] = held
                weakref.finalize(req, held.finish)  # should task_postrun never come
            try:
                return inner(*a, **kw)
            except SystemExit as exc:  # its pool process was terminated: say why
                ended = terminated_exit(exc, _limit_here(self, req))
                if ended is None:
                    raise
                raise ended from exc
            except Retry as exc:
                note(
                    rec,
                    _WARNING,
                    f"task {info.name} ({info.task_id}) will be retried {exc.humanize()} as "
                    f"{info.next_attempt()}: {rec.error_text(_retried(exc) or exc)}",
                    task_id=info.task_id,
                    attempt=attempt + 1,
                )
                raise

        get = header_getter(getattr(req, "headers", None) or {}, vars(req))
        return run_task(
            b, info, get, task, args, kwargs, keep_lease=_handed_to_retry, retried=_retried
        )


def _limit_here(task: Any, req: Any) -> Any:
    """The hard time limit of the task run ``req`` (in the pool process that runs it)."""
    limits = getattr(req, "timelimit", None) or (None, None)
    return limits[0] or getattr(task, "time_limit", None) or task.app.conf.task_time_limit


def _retried(exc: BaseException) -> BaseException | None:
    """The error of a run that Celery retries (``self.retry(exc=...)``, ``autoretry_for``): the
    exception the retry was for, or the ``Retry`` itself when it names none."""
    if not isinstance(exc, Retry):
        return None
    real = exc.exc
    return real if isinstance(real, BaseException) else exc


def _handed_to_retry(exc: BaseException, held: Holding) -> bool:
    """A retry that was sent with the run's lease token: the retry holds the job on."""
    return held.resent and isinstance(exc, Retry)


def _plain_call(cls: type) -> bool:
    """True when the next ``__call__`` after :class:`DiagLogTask` is Celery's own (which would
    push a second, empty request context): the task's ``run`` is called instead, as Celery's
    tracer does."""
    mro = cls.__mro__
    for klass in mro[mro.index(DiagLogTask) + 1 :]:
        if "__call__" in vars(klass):
            return klass is Task
    return True


# -- signals (connected once per process) --------------------------------------------------------

_connected = False


def _connect() -> None:
    global _connected
    if _connected:
        return
    _connected = True
    signals.before_task_publish.connect(_on_publish, weak=False, dispatch_uid="diaglog-publish")
    signals.worker_init.connect(_on_worker_init, weak=False, dispatch_uid="diaglog-worker-init")
    signals.worker_process_shutdown.connect(
        _on_process_shutdown, weak=False, dispatch_uid="diaglog-process-shutdown"
    )
    signals.task_received.connect(_on_received, weak=False, dispatch_uid="diaglog-received")
    signals.task_revoked.connect(_on_revoked, weak=False, dispatch_uid="diaglog-revoked")
    signals.task_failure.connect(_on_failure, weak=False, dispatch_uid="diaglog-failure")
    signals.task_postrun.connect(_on_postrun, weak=False, dispatch_uid="diaglog-postrun")


def _on_publish(sender: Any = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
    """Tasks sent by name (``send_task``) or by Celery itself get the sender's ids too (never a
    lease: a hand-off may fail, and a signal receiver cannot fail the send)."""
    if headers is None or REQUEST_ID in headers:
        return
    trace, _held = _sender()
    headers.update(outgoing_headers(trace, hand_off=False))


def _sender() -> tuple[Any, Holding | None]:
    """The trace a task sent now is sent from, and the lease holding to hand the job on from:
    the current request or job, or else the task run Celery is tracing in this thread after it
    returned (Celery sends the chain's next task and the ``link`` callbacks then, outside the
    run), or else the task whose end the worker's main process is handling (its error
    callbacks: its ids, no part of the job), or ``(None, None)``."""
    trace = current_trace()
    if trace is not None:
        return trace, None
    if _after:
        try:
            held = _after.get(current_task.request) if current_task else None
        except TypeError:  # not a Celery request
            held = None
        if held is not None:
            return held.trace, held
    req = handling()
    if req is not None:
        parent, problems = parent_from(headers_of(req))
        if not problems:
            return parent, None
    return None, None


def _resent(task_id: Any) -> dict[str, Any] | None:
    """The headers of a task the worker's main process sends again with its own id while it
    handles its end: Celery's retry of a task whose pool process died (``retry_on_worker_lost``).
    It keeps the task's diaglog headers as they came, its lease token too, as a retry sent from
    the run would: the lost run can no longer free its part of the job, and the retry adopts
    it."""
    req = handling()
    if req is None or task_id is None or task_id != req.id:
        return None
    get = headers_of(req)
    return {name: get(name) for name in HEADERS if get(name) is not None}


def _on_postrun(sender: Any = None, task: Any = None, **_: Any) -> None:
    """Celery is done with a task run (its chain's next task and its callbacks are sent): the
    job's lease the run kept is freed."""
    held = _after.pop(getattr(task, "request", None), None) if _after else None
    if held is not None:
        held.finish()


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    b = _bindings.get(getattr(sender, "app", None))
    if b is None:
        return
    try:
        start_worker(b, "Celery worker")
    except ConfigError as exc:
        fail_startup(exc)
    share_notes()  # before the pool processes are forked
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, TaskIds) for f in logger.filters):
            logger.addFilter(TaskIds())  # a worker's children inherit it


def _on_process_shutdown(**_: Any) -> None:
    for b in list(_bindings.values()):
        b.flush()


def _hard_limit(req: Any) -> Any:
    limits = getattr(req, "time_limits", None) or (None, None)
    task = req.task
    return limits[0] or getattr(task, "time_limit", None) or task.app.conf.task_time_limit


def _on_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    if request is None or request.task.app not in _bindings:
        return
    register(request)  # also when the task has a request class of its own
    if not _hard_limit(request):
        return
    _limited[request.id] = request
    while len(_limited) > _LIMITED_MAX:
        _limited.popitem(last=False)


def _on_revoked(
    sender: Any = None,
    request: Any = None,
    terminated: bool = False,
    signum: Any = None,
    expired: bool = False,
    **_: Any,
) -> None:
    b = _bindings.get(getattr(sender, "app", None))
    if b is None or request is None:
        return
    ctx = vars(request)
    task_id = ctx.get("id")
    pid = None
    if expired:
        what, outcome = "expired before it ran", "expired"
    elif terminated:
        what, outcome = f"was revoked and terminated ({signal_name(signum)})", "revoked"
        running = registered(task_id) if task_id is not None else None
        pid = getattr(running, "worker_pid", None)
    else:
        what, outcome = "was revoked before it ran", "revoked"
    get = header_getter(ctx.get("headers") or {}, ctx)
    _end_outside(b, sender.name, task_id, get, what, outcome, _WARNING, pid, terminated)


def _on_failure(
    sender: Any = None, task_id: str | None = None, exception: Any = None, **_: Any
) -> None:
    if isinstance(exception, WorkerLostError) and task_id is not None:
        _on_lost(sender, task_id, exception)
    if not isinstance(exception, TimeLimitExceeded) or task_id is None:
        return
    req = _limited.pop(task_id, None)
    b = _bindings.get(getattr(sender, "app", None))
    if req is None or b is None:
        return
    note_time_limit(req.worker_pid)  # first: billiard sends the signal once this returns
    d = req.request_dict
    get = header_getter(d.get("headers") or {}, d)
    limit = exception.args[0] if exception.args else _hard_limit(req)
    what = f"was killed by its hard time limit ({limit}s)"
    _end_outside(b, sender.name, task_id, get, what, "time_limit", _ERROR, req.worker_pid, True)


def _on_lost(sender: Any, task_id: str, exception: WorkerLostError) -> None:
    """Main worker process: the pool process running the task exited before it answered
    (SIGKILL from outside, the OOM killer), and Celery failed the task with ``WorkerLostError``
    (after ``worker_lost_wait``). The process is gone, and wrote nothing more: its part of the
    job is given up first, then the task's last line (``outcome`` ``killed``) says so."""
    b = _bindings.get(getattr(sender, "app", None))
    if b is None:
        return
    _limited.pop(task_id, None)
    req = registered(task_id)
    if req is not None:
        get = headers_of(req)
    else:
        ctx = vars(sender.request)
        get = header_getter(ctx.get("headers") or {}, ctx)
    give_up(b, lease_of(get))  # first: a new request for the job is accepted once the line is out
    what = f"ended outside its run: its pool process exited ({exception})"
    end_outside(b, sender.name, task_id, get, what, "killed", _ERROR, free=False)


def _end_outside(
    b: Binding,
    name: str,
    task_id: str | None,
    get: Any,
    what: str,
    outcome: str,
    level: int,
    pid: int | None = None,
    ran: bool = False,
) -> None:
    """The last line of a task that ended outside its run; its lease is freed: at once when it
    never ran, else once its pool process ``pid`` has exited (the run frees it itself as it
    unwinds, unless killed first: only one of them finds it held, so no false alarm)."""
    if task_id is not None:
        _limited.pop(task_id, None)
    end_outside(b, name, task_id, get, what, outcome, level, free=not ran)
    if ran:
        token = lease_of(get)
        when_gone(pid, lambda: give_up(b, token))
