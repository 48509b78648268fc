"""The recorder: the one call every producer makes, and the event its subscribers receive.

Every line of the trail, whoever produces it (the request hooks, stages, background work, the
logging bridge, the job guard, the watchdog, diaglog's own reports), goes through
:meth:`Recorder.record`. It always:

1. renders the line once from its parts and writes it to the files (one ``write(2)``), and
2. opens the entry of the in-flight registry for a request or job start, after its line is
   written (an end's producer closes it with :meth:`Recorder.close` before it builds the end
   line, so that no hang report can follow that line or be missing from its count);

and only when somebody listens (a signal receiver, the console, the live bridge, a capture
helper) does it build an :class:`Event` and hand it to them. Nothing on the request path chooses a
route: adding a subscriber is one :meth:`Recorder.subscribe` call and leaves the file path as it
was.

Subscribers and signal receivers never raise into the request: a failure is counted, reported
once (stderr and ``errors.log``) and skipped. A subscriber that records while it is being called
(Socket.IO or Redis clients log) gets its line written, but is not called again for it, so
fan-out cannot recurse.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from blinker import Signal

from .files.render import follow_forks, printable_variant
from .signals import SIGNALS, _receivers
from .trail import (
    ERRORS_FROM,
    FLOAT_DIGITS,
    HOST,
    KIND_LOGGER,
    LOGGER_ROOT,
    OPENS,
    PRINTABLE,
    Fields,
    fields_dict,
    level_name,
)

if TYPE_CHECKING:
    from .context import Trace
    from .files.render import Renderer

__all__ = ["Event", "Recorder", "Subscriber"]

_time = time.time
_current_thread = threading.current_thread
_getpid = os.getpid
_new_event = object.__new__
_ERROR = logging.ERROR
_NEVER = 1 << 30  # a level no record has: no files, nothing written


class Event:
    """One diagnostic record, as signal receivers, the live stream and test captures see it.

    ``kind`` is the ``event`` key; ``fields`` holds the kind's own keys (``method``, ``path``,
    ``status``, ``duration_ms``, ``stage``, ``stages``, ``ok``, ``error`` ...); ``to_dict()``
    gives the JSON-lines form with ``ts`` as epoch seconds. Built only when somebody listens.
    """

    # ``fields`` and ``thread`` are named on first read (a receiver that reads neither, like most,
    # does not pay for them): ``_raw`` is the producer's tuple of field values (immutable, so
    # reading later sees what was recorded; a mapping is copied at once) and ``_thread`` the
    # recording thread, or its name when given. Recorder.record fills the slots itself, not
    # through __init__ (cheaper): a new attribute goes in both.
    __slots__ = (
        "_fields",
        "_raw",
        "_thread",
        "exc",
        "job_id",
        "kind",
        "level",
        "logger",
        "msg",
        "pid",
        "request_id",
        "target",
        "trace",
        "ts",
    )

    def __init__(
        self,
        kind: str,
        level: int,
        logger: str,
        msg: str,
        request_id: str | None = None,
        job_id: str | None = None,
        fields: Fields | None = None,
        *,
        target: str = "requests",
        exc: str | None = None,
        trace: Trace | None = None,
        ts: float | None = None,
        thread: str | None = None,
    ) -> None:
        self.kind = kind
        self.ts = _time() if ts is None else ts
        self.level = level
        self.logger = logger
        self.msg = msg
        self.request_id = request_id
        self.job_id = job_id
        if fields is None or type(fields) is tuple:
            self._raw = fields
            self._fields: dict[str, Any] | None = None
        else:
            self._fields = dict(fields)
        #: The file the line went to: ``"requests"`` or ``"jobs"``.
        self.target = target
        self.exc = exc
        self.trace = trace
        self.pid = os.getpid()
        self._thread: str | threading.Thread = thread if thread is not None else _current_thread()

    @property
    def fields(self) -> dict[str, Any]:
        """The kind's fields by name (``None`` values left out)."""
        fields = self._fields
        if fields is None:
            fields = self._fields = fields_dict(self.kind, self._raw)
        return fields

    @fields.setter
    def fields(self, value: dict[str, Any]) -> None:
        self._fields = value

    @property
    def thread(self) -> str:
        """The name of the thread that recorded the event (or the name it was given)."""
        thread = self._thread
        return thread if isinstance(thread, str) else thread.name

    @thread.setter
    def thread(self, value: str) -> None:
        self._thread = value

    @property
    def level_name(self) -> str:
        return level_name(self.level)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-lines form: documented keys, keys without a value left out. ``ts`` is epoch."""
        d: dict[str, Any] = {
            "ts": self.ts,
            "level": level_name(self.level),
            "event": self.kind,
            "logger": self.logger,
            "msg": self.msg,
        }
        if self.request_id is not None:
            d["request_id"] = self.request_id
        if self.job_id is not None:
            d["job_id"] = self.job_id
        for k, v in self.fields.items():
            if v is not None:
                d[k] = round(v, FLOAT_DIGITS) if type(v) is float else v  # as in JSON lines
        d["pid"] = self.pid
        d["host"] = HOST
        d["thread"] = self.thread
        if self.exc:
            d["exc"] = self.exc
        return d

    def __repr__(self) -> str:
        return (
            f"<Event {self.kind} {level_name(self.level)} req={self.request_id} "
            f"job={self.job_id} {self.msg!r}>"
        )


#: A subscriber is called with each event (of every kind; filter inside).
Subscriber = Callable[[Event], None]


class Writer(Protocol):
    """Takes one rendered line (a :class:`~flask_diaglog.files.writer.LogFile`)."""

    def write(self, data: bytes) -> None: ...


class Files(Protocol):
    """Where rendered lines go: a writer per target (``requests``, ``jobs``) and one for ERROR
    and above, or ``None`` (see :class:`~flask_diaglog.files.FileSet`)."""

    @property
    def targets(self) -> Mapping[str, Writer]: ...

    @property
    def errors(self) -> Writer | None: ...


class Registry(Protocol):
    """The in-flight registry, opened and closed by start and end records."""

    def add(self, trace: Trace, name: str | None = None) -> None: ...

    def discard(self, trace: Trace) -> None: ...


class _Flag(threading.local):
    active = False


class Recorder:
    """Records the trail of one app (or one standalone handler).

    :param files: where rendered lines are written, or ``None`` for no files.
    :param render: the line renderer (:data:`~flask_diaglog.files.render.RENDERERS`).
    :param level: the lowest level written to the files.
    :param registry: the in-flight registry, or ``None``.
    :param sender: the sender of the signals (the Flask app), or ``None`` to send none.
    :param redact: scrubs secrets from free text (exception messages, tracebacks).
    """

    def __init__(
        self,
        *,
        files: Files | None,
        render: Renderer,
        level: int = logging.INFO,
        registry: Registry | None = None,
        sender: Any = None,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        self.render = render
        self.level = level
        self.registry = registry
        self.sender = sender
        self.redact: Callable[[str], str] = redact if redact is not None else _same
        #: Least seconds between two ``progress`` lines of a trace (DIAGLOG_PROGRESS_INTERVAL).
        self.progress_interval = 0.0
        #: Seconds a stopping process waits for this app's running jobs (DIAGLOG_SHUTDOWN_GRACE).
        self.shutdown_grace = 30.0
        #: Failures per sink or subscriber name.
        self.failures: dict[str, int] = {}
        self._subscribers: tuple[tuple[str, Subscriber], ...] = ()
        signals: Mapping[str, Signal] = SIGNALS if sender is not None else {}
        # The signal of a kind that has none (or of an app-less recorder): never connected, so
        # the hot path tests ``sig.receivers`` alone, without ``sig is not None`` first.
        unheard = Signal()
        #: Per kind, decided once: its logger, its signal, whether it opens an entry of the
        #: in-flight registry (an end's producer closes it, see :meth:`close`), and its renderer
        #: (a kind whose messages are printable as built skips the plain check of them).
        follow_forks()  # JSON lines carry the pid: right in forked children too
        printable = printable_variant(render)
        self._plan: dict[str, tuple[str, Signal, bool, Renderer]] = {
            kind: (
                logger,
                signals.get(kind, unheard),
                kind in OPENS,
                printable if kind in PRINTABLE else render,
            )
            for kind, logger in KIND_LOGGER.items()
        }
        #: Where each target's lines go, and where ERROR lines also go.
        self._targets: Mapping[str, Writer] = files.targets if files is not None else {}
        self._errors: Writer | None = files.errors if files is not None else None
        if files is None:
            self.level = _NEVER
        self._reported: set[str] = set()
        self._flag = _Flag()
        self._lock = threading.Lock()

    # -- subscribers --------------------------------------------------------------------------

    def subscribe(self, subscriber: Subscriber, name: str | None = None) -> None:
        """Call ``subscriber(event)`` for every record from now on. ``name`` labels its failures
        (default: its ``sink_name`` attribute or qualified name)."""
        label = name or _name_of(subscriber)
        with self._lock:
            self._subscribers = (*self._subscribers, (label, subscriber))

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Stop calling ``subscriber``; unknown subscribers are ignored."""
        with self._lock:
            self._subscribers = tuple(s for s in self._subscribers if s[1] is not subscriber)

    # -- the one call -------------------------------------------------------------------------

    def record(
        self,
        kind: str,
        trace: Trace | None,
        level: int,
        msg: str,
        fields: Fields | None = None,
        # Not keyword-only on purpose: positional defaults are filled from a tuple, keyword-only
        # ones by a dict lookup each, on every call (measured under callgrind).
        exc: str | None = None,
        logger: str | None = None,
        ts: float | None = None,
        thread: str | None = None,
        target: str | None = None,
        ids: tuple[str | None, str | None] | None = None,
    ) -> None:
        """Record one line of ``kind`` for ``trace`` (the request or job it belongs to, or
        ``None``): write it, keep the registry, and tell the subscribers.

        ``fields`` are the kind's keys (see :mod:`flask_diaglog.trail`); ``exc`` a traceback;
        ``logger`` overrides the kind's logger; ``ids`` gives ``(request_id, job_id)`` for a line
        that belongs to no trace. Never raises.
        """
        if ts is None:
            ts = _time()
        log_as, sig, opens, render = self._plan[kind]
        if logger is None:
            logger = log_as
        if trace is not None:
            resolve = trace.resolve
            if resolve is not None:  # a job id the URL or the body may still give
                resolve(trace, False)
            rid = trace.request_id
            jid = trace.job_id
            if target is None:
                target = trace.target
        else:
            rid, jid = ids if ids is not None else (None, None)
            if target is None:
                target = "requests"
        # A start enters the registry after its line, below: what is in flight has its start
        # line in the files. An end left it before its line was built (see close()).
        if level >= self.level:
            try:
                data = render(ts, level, kind, logger, rid, jid, msg, fields, exc, thread)
                self._targets[target].write(data)
                if level >= ERRORS_FROM:
                    errors = self._errors
                    if errors is not None:
                        errors.write(data)
            except Exception as e:  # never into the request: counted like a failing sink
                self.failed("files", e)
        if opens and trace is not None:
            registry = self.registry
            if registry is not None:
                try:
                    name = fields.get("name") if type(fields) is dict else None
                    registry.add(trace, name)
                except Exception as e:
                    self.failed("inflight", e)
        subs = self._subscribers
        if subs or sig.receivers:
            flag = self._flag
            if flag.active:
                return  # recorded from inside a subscriber: written, not fanned out again
            flag.active = True
            try:
                # Filled slot by slot, not through Event(...): no keyword matching and no
                # defaults to work out (type.__call__ and __init__ with a keyword dict): -4.5 k
                # instructions per event (callgrind).
                ev = _new_event(Event)
                ev.kind = kind
                ev.ts = ts
                ev.level = level
                ev.logger = logger
                ev.msg = msg
                ev.request_id = rid
                ev.job_id = jid
                if type(fields) is tuple or fields is None:
                    ev._raw = fields
                    ev._fields = None
                else:
                    ev._fields = dict(fields)
                ev.target = target
                ev.exc = exc
                ev.trace = trace
                ev.pid = _getpid()
                ev._thread = thread if thread is not None else _current_thread()
                if sig.receivers and not sig.is_muted:  # blinker's muted()
                    self._send(sig, ev)
                for label, sub in subs:
                    try:
                        sub(ev)
                    except Exception as e:
                        self.failed(label, e)
            finally:
                flag.active = False

    def close(self, trace: Trace) -> None:
        """Take ``trace`` out of the in-flight registry as its work ends. The producer of a
        ``request_end`` or ``job_end`` line calls this before it reads ``trace.hung`` for that
        line: from then on no hang report of the work starts, and one being recorded meanwhile
        has been counted (see :meth:`flask_diaglog.watchdog.InFlight.discard`). So the end line
        counts every hang line of its work, and no hang line follows it. Never raises."""
        registry = self.registry
        if registry is not None:
            try:
                registry.discard(trace)
            except Exception as e:
                self.failed("inflight", e)

    def _send(self, sig: Signal, ev: Event) -> None:
        sender = self.sender
        # The receivers blinker's receivers_for would give, resolved once per connect or
        # disconnect (see flask_diaglog.signals): -7 k instructions per event.
        for ref in _receivers(sig, sender):
            receiver = ref()
            if receiver is not None:  # else a weak receiver that died, or one disconnected
                try:
                    receiver(sender, event=ev)
                except Exception as e:
                    self.failed(_receiver_name(sig, receiver), e)

    # -- errors ---------------------------------------------------------------------------------

    def format_exc(self, exc: BaseException) -> str:
        """The traceback of ``exc``, redacted."""
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
        return self.redact(text)

    def error_text(self, exc: BaseException) -> str:
        """``ValueError: message`` with the message redacted: the ``error`` field."""
        return f"{type(exc).__name__}: {self.redact(str(exc))}"

    def report_internal(self, msg: str, exc: BaseException | None = None) -> None:
        """An ERROR line about diaglog itself (a failing sink, a store outage)."""
        self.record(
            "log",
            None,
            _ERROR,
            msg,
            exc=self.format_exc(exc) if exc is not None else None,
            logger=LOGGER_ROOT,
        )

    def failed(self, name: str, exc: BaseException, what: str | None = None) -> None:
        """Count a failure of ``name`` (a sink, unless ``what`` says what it is); report the
        first one on stderr and in ``errors.log``."""
        label = what or f"sink {name}"
        with self._lock:
            self.failures[name] = self.failures.get(name, 0) + 1
            first = name not in self._reported
            self._reported.add(name)
        if not first:
            return
        with contextlib.suppress(Exception):  # stderr itself may be gone
            sys.stderr.write(
                f"flask-diaglog: {label} failed and is skipped for this event "
                f"({type(exc).__name__}: {exc}); further failures are counted, not printed\n"
            )
        with contextlib.suppress(Exception):
            self.report_internal(f"flask-diaglog {label} failed; further failures are counted", exc)


def _same(text: str) -> str:
    return text


def _name_of(obj: object) -> str:
    return str(getattr(obj, "sink_name", None) or getattr(obj, "__qualname__", None) or repr(obj))


def _receiver_name(sig: Signal, receiver: object) -> str:
    what = getattr(receiver, "__qualname__", None) or repr(receiver)
    module = getattr(receiver, "__module__", None)
    return f"signal {getattr(sig, 'name', '?')} receiver {module + '.' if module else ''}{what}"
