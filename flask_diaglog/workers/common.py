"""What every task-queue integration shares: the diaglog headers of a task message, the parent
:class:`~flask_diaglog.context.Trace` read back from them, the job guard's lease carried along,
the task run itself, and the checks a worker makes at startup.

Headers (names are the same for Celery and RQ; RQ keeps them in ``job.meta``):

* ``diaglog_request_id``: the request (or job) that sent the task;
* ``diaglog_job_id``: its job id, when it has one;
* ``diaglog_origin``: ``"POST /api/generate"``, the request that sent it (for hang reports);
* ``traceparent``: a W3C trace context whose trace id is the request id when that is a trace id,
  else a digest of it (so a tracing system sees one trace);
* ``diaglog_lease``: the job guard's hand-off token, when sent from a guarded request.

A task whose headers are missing or malformed still runs, with fresh ids and a WARNING line that
says which header was wrong; a malformed lease, or one that does not come with the id of the job
it holds, is not held (:func:`lease_from`): the task runs unguarded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..background import run_job
from ..config import ConfigError
from ..context import Trace, as_id, current_trace, is_valid_id, new_request_id, traceparent_id
from .lease import LEASE, Holding, give_up, hand_off_current, hold

if TYPE_CHECKING:
    from flask import Flask

    from ..config import Settings
    from ..jobs import JobGuard
    from ..live import LiveBridge
    from ..record import Recorder

__all__ = [
    "HEADERS",
    "LOGGER_WORKER",
    "Binding",
    "TaskInfo",
    "bad_header",
    "binding",
    "end_outside",
    "job_of",
    "lease_from",
    "outgoing_headers",
    "parent_from",
    "run_task",
    "traceparent_for",
]

R = TypeVar("R")

REQUEST_ID = "diaglog_request_id"
JOB_ID = "diaglog_job_id"
ORIGIN = "diaglog_origin"
TRACEPARENT = "traceparent"
#: Every header diaglog puts on a task message.
HEADERS = (REQUEST_ID, JOB_ID, ORIGIN, TRACEPARENT, LEASE)

#: The logger of the lines the worker integrations write about tasks (headers, retries, outcomes).
LOGGER_WORKER = "flask_diaglog.worker"

_WARNING = logging.WARNING
_ORIGIN = re.compile(r"(?P<method>[A-Z]{1,16}) (?P<path>/[^\r\n]{0,2047})")
_HEX32 = re.compile(r"[0-9a-f]{32}")


class _State(Protocol):
    """The part of the app's diaglog state an integration reads (never the whole state)."""

    recorder: Recorder | None
    settings: Settings
    guard: JobGuard | None
    live: LiveBridge | None


@dataclass(eq=False)
class Binding:
    """What a task-queue integration needs from one Flask app."""

    app: Flask
    #: ``None`` while ``DIAGLOG_ENABLED`` is off: tasks then run untouched.
    rec: Recorder | None
    settings: Settings
    guard: JobGuard | None
    #: The live bridge of the app (a web process with Flask-SocketIO), if any.
    live: LiveBridge | None
    #: The write-only emitter a worker process starts when ``DIAGLOG_LIVE_QUEUE`` is set.
    emitter: LiveBridge | None = None

    def flush(self, timeout: float = 5.0) -> None:
        """Emit what the worker's live emitter still holds (before a process exits)."""
        if self.emitter is not None:
            self.emitter.flush(timeout)


def binding(app: Flask) -> Binding:
    """The :class:`Binding` of ``app``; ``RuntimeError`` when DiagLog is not registered on it."""
    state: _State | None = app.extensions.get("diaglog")
    if state is None:
        raise RuntimeError(
            f"The app {app.name!r} is not registered with flask-diaglog: call DiagLog(app) (or "
            "diaglog.init_app(app)) before connecting a task queue to it."
        )
    return Binding(app, state.recorder, state.settings, state.guard, state.live)


@dataclass(frozen=True)
class TaskInfo:
    """What the queue knows about one task run."""

    #: The task's name (Celery) or function (RQ): the job's name in its lines.
    name: str
    #: The queue's own id of the task.
    task_id: str | None = None
    #: 1 for the first run, 2 for the first retry ...
    attempt: int = 1
    #: The most runs the queue will make (``None``: not limited or not known).
    attempts: int | None = None
    queue: str | None = None
    #: Run in the sending process (Celery ``task_always_eager``, RQ ``is_async=False``).
    eager: bool = False

    def fields(self) -> dict[str, Any]:
        """The fields of the run's ``job_start`` and ``job_end`` lines (set ones only)."""
        out = {
            "task_id": self.task_id,
            "attempt": self.attempt,
            "attempts": self.attempts,
            "queue": self.queue,
        }
        return {k: v for k, v in out.items() if v is not None}

    def next_attempt(self) -> str:
        """``attempt 3 of 4`` (``of`` when the number of attempts is known): the next run's."""
        of = f" of {self.attempts}" if self.attempts else ""
        return f"attempt {self.attempt + 1}{of}"


# -- sending -----------------------------------------------------------------------------------


def traceparent_for(request_id: str) -> str:
    """A W3C ``traceparent`` for ``request_id``: its trace id is the request id when that is one
    (a request that arrived with a ``traceparent``), else the first 128 bits of its SHA-256."""
    rid = request_id.lower()
    trace_id = (
        rid
        if _HEX32.fullmatch(rid) and rid != "0" * 32
        else hashlib.sha256(request_id.encode()).hexdigest()[:32]
    )
    return f"00-{trace_id}-{os.urandom(8).hex()}-01"


def outgoing_headers(
    trace: Trace | None,
    *,
    hand_off: bool = True,
    task_id: str | None = None,
    held: Holding | None = None,
) -> dict[str, Any]:
    """The diaglog headers of a task sent now from ``trace`` (the current trace, or ``None``).

    Outside any request or job the task gets a fresh request id. With ``hand_off``, inside a
    guarded request, or a task run that holds its job (``held``, default: the run in progress),
    the job's lease is handed off to the task (see :mod:`.lease`); ``task_id`` is the id the
    task is sent with (the run's own id: its retry).
    """
    rid = trace.request_id if trace is not None else None
    if rid is None:
        rid = new_request_id()
    out: dict[str, Any] = {REQUEST_ID: rid, TRACEPARENT: traceparent_for(rid)}
    if trace is not None:
        resolve = trace.resolve
        if resolve is not None:  # the job id may still be in the URL or the body
            resolve(trace, True)
        if trace.job_id is not None:
            out[JOB_ID] = trace.job_id
        if trace.method is not None and trace.path is not None:
            out[ORIGIN] = f"{trace.method} {trace.path}"
        token = hand_off_current(trace, task_id, held) if hand_off else None
        if token is not None:
            out[LEASE] = token
    return out


# -- receiving ---------------------------------------------------------------------------------


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def bad_header(name: str, value: object, why: str) -> str:
    """What is wrong with a task's header, for its WARNING line: ``header NAME=<value> why``."""
    return f"header {name}={_short(value)} {why}"


def parent_from(get: Callable[[str], Any]) -> tuple[Trace, list[str]]:
    """The trace that sent a task, read from its headers (``get(name)`` gives one or ``None``),
    and what was wrong with them. Invalid or missing ids are replaced by fresh ones."""
    problems: list[str] = []
    rid = as_id(get(REQUEST_ID))  # a whole number is taken as its text, as the guard does
    tp = get(TRACEPARENT)
    jid = as_id(get(JOB_ID))
    origin = get(ORIGIN)
    if rid is None and tp is None and jid is None:
        problems.append(
            "it carries no diaglog headers (it was sent by a process without diaglog's task "
            "queue integration); it runs with a fresh request id"
        )
    if rid is not None and not is_valid_id(rid):
        problems.append(bad_header(REQUEST_ID, rid, "is not a valid id; it runs with a fresh one"))
        rid = None
    if tp is not None:
        trace_id = traceparent_id(tp) if isinstance(tp, str) else None
        if trace_id is None:
            problems.append(bad_header(TRACEPARENT, tp, "is not a W3C traceparent"))
        elif rid is None:
            rid = trace_id
    if rid is None:
        rid = new_request_id()
    if jid is not None and not is_valid_id(jid):
        problems.append(bad_header(JOB_ID, jid, "is not a valid id; it runs without one"))
        jid = None
    method = path = None
    if origin is not None:
        m = _ORIGIN.fullmatch(origin) if isinstance(origin, str) else None
        if m is None:
            problems.append(bad_header(ORIGIN, origin, "is not 'METHOD /path'"))
        else:
            method, path = m["method"], m["path"]
    return Trace(None, "request", rid, jid, method, path), problems


def lease_from(get: Callable[[str], Any], parent: Trace) -> tuple[Mapping[str, Any] | None, str]:
    """The job lease token of a task (header ``diaglog_lease``) to hold, given the ``parent``
    :func:`parent_from` read; or ``None`` and what was wrong with it (``""``: no token).

    A token comes with the job id of the job it holds (``diaglog_job_id``): one without it, or
    for another job, is not held (nor given up): the task runs unguarded. What else a token
    needs, :func:`~flask_diaglog.jobs.adopt` checks when it is held."""
    token = get(LEASE)
    if token is None:
        return None, ""
    if not isinstance(token, Mapping):
        return None, f"header {LEASE} is not a job lease token (a {type(token).__name__})"
    held = token.get("job_id")
    if parent.job_id is None:
        return None, f"header {LEASE} (job {_short(held)}) comes without a valid {JOB_ID}"
    if held != parent.job_id:
        return None, f"header {LEASE} holds job {_short(held)}, not {JOB_ID}={parent.job_id!r}"
    return token, ""


def lease_of(get: Callable[[str], Any]) -> Mapping[str, Any] | None:
    """The lease token of a task that ended outside its run, to give up: only one
    :func:`lease_from` would hold."""
    return lease_from(get, parent_from(get)[0])[0]


# -- running -----------------------------------------------------------------------------------


def note(rec: Recorder, level: int, msg: str, **fields: Any) -> None:
    """A line of the worker integration, in the current job's trail."""
    rec.record("log", current_trace(), level, msg, fields, logger=LOGGER_WORKER)


def job_of(rec: Recorder, parent: Trace) -> Trace:
    """A job trace of ``rec`` that carries the ids of ``parent`` (what :func:`parent_from` read
    from a task's headers): for lines written outside the run, in the sender's trail."""
    return Trace(rec, "job", parent.request_id, parent.job_id, parent.method, parent.path)


def run_task(
    b: Binding,
    info: TaskInfo,
    get: Callable[[str], Any],
    fn: Callable[..., R],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    keep_lease: Callable[[BaseException, Holding], bool] | None = None,
    retried: Callable[[BaseException], BaseException | None] | None = None,
    bad: tuple[str, ...] = (),
) -> R:
    """Run one task as a diaglog job: its ``job_start`` and ``job_end`` lines (with the fields of
    :meth:`TaskInfo.fields`: task id, attempt, attempts, queue), its stages and log records in
    the worker's ``jobs.log``, with the ids of the request that sent it, while holding the job
    guard's lease it carries.

    :param get: reads one header of the task message (``None`` when absent).
    :param keep_lease: ``keep_lease(exc, holding)`` is true when the run ended with an exception
        that hands the job on to a retry with the same lease: the lease is then not freed.
    :param retried: ``retried(exc)`` is the error of a run the queue will run again (its
        ``job_end`` says ``retried``, a WARNING: see :func:`~flask_diaglog.background.run_job`).
    :param bad: what was wrong with the queue's own diaglog headers (:func:`bad_header`), for
        WARNING lines with the others.
    """
    rec = b.rec
    if rec is None:
        return fn(*args, **kwargs)
    here = current_trace()
    if info.eager and here is not None:
        # Run in the sending request or job: that is the parent, and it holds the lease.
        parent: Trace = here
        problems: list[str] = []
        token = None
    else:
        parent, problems = parent_from(get)
        token, wrong = lease_from(get, parent)
        if wrong:
            problems.append(f"{wrong}; it runs unguarded")
        problems.extend(bad)

    # The lease is freed after the run's job_end, outside it: with the sender's ids still.
    ids = None
    if token is not None:
        ids = job_of(rec, parent)
    with hold(b, token, keep_lease, info.task_id, ids) as held:
        if held.problem is not None:
            problems.append(held.problem)

        def body(*a: Any, **kw: Any) -> R:
            for problem in problems:
                note(
                    rec,
                    _WARNING,
                    f"task {info.name} ({info.task_id}): {problem}",
                    task_id=info.task_id,
                )
            return fn(*a, **kw)

        return run_job(
            rec, b.app, parent, None, info.name, body, args, kwargs, info.fields(), retried=retried
        )


def end_outside(
    b: Binding,
    name: str,
    task_id: str | None,
    get: Callable[[str], Any],
    what: str,
    outcome: str,
    level: int,
    *,
    free: bool = True,
) -> None:
    """The last line of a task that ended outside its run (revoked, expired, cancelled, stopped,
    killed at its time limit), written by the process that saw it end, in ``jobs.log`` with the
    sender's ids and ``outcome``; with ``free`` its lease is given up."""
    rec = b.rec
    if rec is None:
        return
    parent, _problems = parent_from(get)
    rec.record(
        "log",
        None,
        level,
        f"task {name} ({task_id}) {what}",
        {"task_id": task_id, "name": name, "outcome": outcome},
        None,
        LOGGER_WORKER,
        target="jobs",
        ids=(parent.request_id, parent.job_id),
    )
    if free:
        give_up(b, lease_from(get, parent)[0])


# -- worker startup ----------------------------------------------------------------------------


def check_worker(b: Binding, what: str) -> None:
    """Refuse to start a worker that lacks what it needs, naming what to set.

    A worker holds the leases of guarded jobs, so it needs the job store the web app uses: a
    shared Redis (``DIAGLOG_JOB_STORE``), not the per-process memory store.
    """
    if b.rec is None:
        return  # DIAGLOG_ENABLED is off: tasks run untouched
    store = b.settings.job_store
    if not store.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            f"flask-diaglog: this {what} has DIAGLOG_JOB_STORE={store!r}. Set DIAGLOG_JOB_STORE "
            "(environment variable or app config) to the Redis URL the web app's job guard "
            "uses, e.g. redis://redis-host:6379/0: the worker holds the leases of guarded jobs "
            "there until their tasks end."
        )


def start_worker(b: Binding, what: str) -> None:
    """The worker side of :func:`check_worker`, plus its live emitter (``DIAGLOG_LIVE_QUEUE``)."""
    check_worker(b, what)
    if b.rec is None or b.live is not None or b.emitter is not None:
        return
    from ..live import emitter

    b.emitter = emitter(b.settings, b.rec)


def fail_startup(exc: ConfigError) -> None:
    """Stop a worker that cannot start: the message on stderr, exit status 1.

    Queue libraries catch exceptions raised in their startup hooks and carry on; ``SystemExit``
    is the one they let through.
    """
    sys.stderr.write(f"{exc}\n")
    sys.stderr.flush()
    raise SystemExit(1) from exc


def header_getter(*sources: Mapping[str, Any] | None) -> Callable[[str], Any]:
    """``get(name)`` over several header mappings, first one that has it wins."""
    maps = [s for s in sources if s]

    def get(name: str) -> Any:
        for m in maps:
            if name in m:
                return m[name]
        return None

    return get
