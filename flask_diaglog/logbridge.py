"""The bridge from :mod:`logging` into the trail, and everything diaglog changes in ``logging``.

This module owns:

* :class:`DiagLogHandler`, a ``logging.Handler`` that turns each record into one ``log`` line
  (:meth:`Recorder.record`) with the ids of the current request or background job. On its own,
  built with a file name (for example from ``logging.config.dictConfig``), it writes that one file.
* The capture for ``DiagLog(app)`` (:func:`attach`): one :class:`AppHandler` per app sees the
  records of every logger (or of ``DIAGLOG_LOGGERS``), whatever their ``propagate``, through a
  wrapper around ``logging.Logger.callHandlers`` installed while an app needs it. No handler is put
  on the root logger, so ``basicConfig()`` and the last-resort handler work as without diaglog.
  diaglog's own loggers and servers' access lines are never captured.
* The level change: the captured logger (the root logger by default) is set just below
  ``DIAGLOG_LEVEL`` when its level is higher, so INFO records of loggers nobody configured exist.
  Records that exist only because of this change reach diaglog and no other handler, so nothing an
  app's own handlers print changes (``DIAGLOG_ADJUST_LEVELS=False`` leaves levels alone).
* When the console stand-ins (:func:`~flask_diaglog.files.console.stand_in`) go in: with each
  app unless ``DIAGLOG_REPLACE_HANDLERS=False``.

All of it is undone when the app is garbage-collected.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from flask import current_app, has_app_context
from flask.logging import wsgi_errors_stream

from .config import DEFAULTS
from .context import Trace, current_trace
from .files import SingleFile
from .files.console import (
    ECHOED,
    EchoHandler,
    LineQueue,
    is_access_line,
    muted,
    put_back,
    stand_in,
)
from .files.render import RENDERERS
from .files.writer import LogFile
from .record import Recorder
from .redact import Redactor
from .trail import LOGGER_ROOT

__all__ = ["AppHandler", "DiagLogHandler", "attach"]

_OWN = LOGGER_ROOT + "."


class DiagLogHandler(logging.Handler):
    """A ``logging.Handler`` that writes records as diaglog ``log`` lines.

    On its own, for example from ``logging.config.dictConfig``::

        "handlers": {"safe": {"()": "flask_diaglog.DiagLogHandler",
                              "filename": "logs/app.log", "max_bytes": 10485760,
                              "backup_count": 5, "format": "json"}}

    it writes to that file with the same multi-process-safe writer and line formats, adding the
    request and job ids of the current request or background job. Secrets in messages are masked
    as in the diaglog files: ``redact`` is the key-name fragments (``DIAGLOG_REDACT``'s default).

    .. versionchanged:: 0.2
       ``recorder=`` replaces ``dispatch=`` and ``redact=``.
    """

    def __init__(
        self,
        filename: str | None = None,
        *,
        format: str = "plain",
        max_bytes: int = 0,
        backup_count: int = 0,
        compress: bool = False,
        level: int | str = logging.NOTSET,
        redact: Iterable[str] = DEFAULTS["DIAGLOG_REDACT"],
        recorder: Recorder | None = None,
    ) -> None:
        super().__init__(level)
        self.file: LogFile | None = None
        if recorder is None:
            if filename is None:
                raise ValueError("DiagLogHandler needs a filename (or a recorder)")
            if format not in RENDERERS:
                raise ValueError(f"format={format!r} is not one of 'plain', 'json'")
            os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
            self.file = LogFile(
                filename, max_bytes=max_bytes, backup_count=backup_count, compress=compress
            )
            recorder = Recorder(
                files=SingleFile(self.file),
                render=RENDERERS[format],
                level=0,
                redact=Redactor(redact).text,
            )
        self.recorder = recorder

    def handle(self, record: logging.LogRecord) -> bool:
        """Filter, then emit without the handler-wide lock: the writer is thread-safe by itself
        (one ``write(2)`` per record under the file's own lock), so records from many threads are
        not serialised twice."""
        if not self.filters:
            self.emit(record)
            return True
        rv: Any = self.filter(record)
        if isinstance(rv, logging.LogRecord):
            record = rv  # Python 3.12+: a filter may return a replacement record
        if rv:
            self.emit(record)
        return bool(rv)

    def emit(self, record: logging.LogRecord) -> None:
        self._record(self.recorder, current_trace(), record)

    def _record(self, rec: Recorder, trace: Trace | None, record: logging.LogRecord) -> bool:
        """Record ``record``; True when it is on the trail (now or already, as the
        ``request_error`` line of its exception)."""
        if getattr(record, "_diaglog_seen", None) == id(self):
            return False  # the same record handled again (a queue listener re-dispatching it)
        try:
            record._diaglog_seen = id(self)  # not the handler: records may outlive it
            if record.exc_info and trace is not None and record.exc_info[1] is trace.error:
                return True  # already written as the request_error line, with its traceback
            msg = rec.redact(record.getMessage())
            exc = None
            if record.exc_info:
                exc = logging.Formatter().formatException(record.exc_info)
            elif record.exc_text:
                exc = record.exc_text
            if record.stack_info:
                exc = f"{exc}\n{record.stack_info}" if exc else record.stack_info
            rec.record(
                "log",
                trace,
                record.levelno,
                msg,
                None,
                exc=rec.redact(exc) if exc else None,
                logger=record.name,
                ts=record.created,
                thread=record.threadName,
                ids=None
                if trace is not None
                else (getattr(record, "request_id", None), getattr(record, "job_id", None)),
            )
            return True
        except RecursionError:  # pragma: no cover
            raise
        except Exception:
            self.handleError(record)
            return False

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        super().close()


#: The most recently attached app handler: owns log records that belong to no app context.
_newest: weakref.ReferenceType[Recorder] | None = None


class AppHandler(DiagLogHandler):
    """The capture of one app: called (by :func:`attach`'s wrapper) for each record of the
    loggers it captures, at its level or above.

    When ``create_app()`` runs twice in one process (tests do), every app's handler sees each
    record. Each record is therefore written only by the app it belongs to: the app of the current
    request or job, else of the current app context, else the most recently initialised app. It
    holds its recorder weakly, and nothing global holds it: when its app is discarded, so is it,
    and what :func:`attach` changed is undone.

    :param console: the app echoes records to the console (``DIAGLOG_CONSOLE``).
    """

    def __init__(self, recorder: Recorder, level: int, *, console: bool = False) -> None:
        logging.Handler.__init__(self, level)
        self.file = None
        self.recorder_ref = weakref.ref(recorder)
        self.console = console
        #: Logger names captured, with their children; empty: every logger.
        self.prefixes: tuple[str, ...] = ()
        #: The loggers whose level this app needs at its level (see :func:`attach`).
        self.targets: tuple[logging.Logger, ...] = ()
        global _newest
        _newest = self.recorder_ref

    def wants(self, name: str) -> bool:
        """Whether records of the logger ``name`` are captured."""
        prefixes = self.prefixes
        if not prefixes:
            return True
        return any(name == p or name.startswith(p + ".") for p in prefixes)

    def emit(self, record: logging.LogRecord) -> None:
        rec = self.recorder_ref()
        if rec is None:
            return
        trace = current_trace()
        if trace is not None:
            if trace.rec is not rec:
                return
        elif has_app_context():
            if current_app._get_current_object() is not rec.sender:  # type: ignore[attr-defined]
                return
        elif _newest is None or _newest() is not rec:
            return
        if self._record(rec, trace, record) and self.console and not muted.active:
            setattr(record, ECHOED, True)  # on the console now: stand-ins leave it out


# -- the capture: one wrapper around Logger.callHandlers for the whole process -----------------

_lock = threading.Lock()
#: The app handlers alive (weakly): each is offered every record.
_taps: tuple[weakref.ReferenceType[AppHandler], ...] = ()
#: Loggers whose level diaglog lowered: logger -> (level set, level before, effective before).
_lowered: dict[logging.Logger, tuple[int, int, int]] = {}
#: Records at or above this level were enabled before diaglog lowered any level.
_floor = 0
#: What ``Logger.callHandlers`` was before the wrapper went in (called after it).
_next: Callable[[logging.Logger, logging.LogRecord], None] = logging.Logger.callHandlers


def _call_handlers(self: logging.Logger, record: logging.LogRecord) -> None:
    """``Logger.callHandlers`` while an app captures: offer the record to the apps, then hand it
    to the logger's handlers as before, unless it exists only because diaglog lowered a level."""
    if _taps:
        _capture(self, record)
    if record.levelno >= _floor or _enabled_before(self, record.levelno):
        _next(self, record)


def _capture(logger: logging.Logger, record: logging.LogRecord) -> None:
    name = record.name
    if name == LOGGER_ROOT or name.startswith(_OWN) or is_access_line(record):
        return  # diaglog's own records never loop back; access lines are the request lines
    if name == "werkzeug" and record.levelno < 40 and current_trace() is None:
        return  # the development server's own banner ("Running on ...") is no part of a trail
    was = muted.active
    decided = False
    try:
        for ref in _taps:
            h = ref()
            if h is None or record.levelno < h.level or not h.wants(name):
                continue
            if h.console and not decided:
                muted.active = _printed_elsewhere(logger, record)
                decided = True
            h.handle(record)
    finally:
        muted.active = was


def _enabled_before(logger: logging.Logger, levelno: int) -> bool:
    """Whether a record of ``levelno`` on ``logger`` passes the levels as they were before
    diaglog lowered any (levels set by anyone since are taken as they are)."""
    lg: logging.Logger | None = logger
    while lg is not None:
        level = lg.level
        if level:
            mark = _lowered.get(lg)
            if mark is None or mark[0] != level:
                return levelno >= level
            if mark[1]:
                return levelno >= mark[1]
        lg = lg.parent
    return True


_CONSOLE_NAMES = ("stdout", "stderr", "__stdout__", "__stderr__")


def _printed_elsewhere(logger: logging.Logger, record: logging.LogRecord) -> bool:
    """One of the app's own handlers prints ``record`` to the console (stdout or stderr)."""
    if record.levelno < _floor and not _enabled_before(logger, record.levelno):
        return False  # only diaglog sees it
    consoles = [getattr(sys, n, None) for n in _CONSOLE_NAMES]
    c: logging.Logger | None = logger
    while c is not None:
        for h in c.handlers:
            if (
                record.levelno >= h.level
                and type(h) is not EchoHandler
                and isinstance(h, logging.StreamHandler)
                and not isinstance(h, logging.FileHandler)
                and any(h.stream is s for s in (*consoles, wsgi_errors_stream))
            ):
                return True
        c = c.parent if c.propagate else None
    return False


def _install() -> None:
    """Put the wrapper in place (under ``_lock``); whatever was there is called after it."""
    global _next
    if logging.Logger.__dict__.get("callHandlers") is not _call_handlers:
        _next = logging.Logger.callHandlers
        logging.Logger.callHandlers = _call_handlers  # type: ignore[method-assign]


def _update_floor() -> None:
    global _floor
    _floor = max((mark[2] for mark in _lowered.values()), default=0)


def _lower(lg: logging.Logger, level: int) -> None:
    """Set ``lg`` just below ``level`` if records of ``level`` do not pass it (under ``_lock``)."""
    mark = _lowered.get(lg)
    if mark is not None and lg.level == mark[0]:
        current, before, effective = mark  # lowered already, by another app
    elif lg.level and lg.parent is not None:
        return  # a named logger whose level the app set: its choice
    else:
        current = effective = lg.getEffectiveLevel()
        before = lg.level
    if current <= level:
        return
    marker = max(level - 1, 1)  # a level nobody else sets: tells diaglog's change from the app's
    lg.setLevel(marker)
    _lowered[lg] = (marker, before, effective)
    _update_floor()


def _restore_levels(loggers: Sequence[logging.Logger]) -> None:
    """Put back levels no live app needs any more (under ``_lock``)."""
    live = [h for h in (r() for r in _taps) if h is not None]
    for lg in loggers:
        mark = _lowered.get(lg)
        if mark is None or any(lg in h.targets for h in live):
            continue
        del _lowered[lg]
        if lg.level == mark[0]:
            lg.setLevel(mark[1])
    _update_floor()


#: Undo work of discarded apps, waiting for ``_lock`` (see :func:`_detach`).
_pending: list[
    tuple[
        weakref.ReferenceType[AppHandler],
        Sequence[logging.Logger],
        list[tuple[logging.Logger | None, EchoHandler]],
    ]
] = []


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Hold ``_lock``; before letting go, undo what discarded apps left waiting."""
    with _lock:
        yield
        _undo_pending()


def _detach(
    ref: weakref.ReferenceType[AppHandler],
    loggers: Sequence[logging.Logger],
    stand_ins: list[tuple[logging.Logger | None, EchoHandler]],
    lines: LineQueue | None,
) -> None:
    """Undo :func:`attach` for an app that was garbage-collected.

    A finalizer runs wherever the collector happens to run, possibly in a thread that holds
    ``_lock`` already: so it never waits for the lock. It queues the work, and whoever holds the
    lock does it before letting go.
    """
    _pending.append((ref, loggers, stand_ins))
    if _lock.acquire(blocking=False):
        try:
            _undo_pending()
        finally:
            _lock.release()
    if lines is not None:
        lines.stop()


def _undo_pending() -> None:
    """Do the queued undo work (under ``_lock``)."""
    global _taps
    while _pending:
        ref, loggers, stand_ins = _pending.pop()
        _taps = tuple(r for r in _taps if r is not ref)
        _restore_levels(loggers)
        for where, echo in stand_ins:
            put_back(where, echo)
    if not _taps and not _lowered and logging.Logger.__dict__.get("callHandlers") is _call_handlers:
        logging.Logger.callHandlers = _next  # type: ignore[method-assign,assignment]


def attach(
    handler: AppHandler,
    names: Sequence[str],
    level: int,
    *,
    app_logger: logging.Logger | None = None,
    redact: Callable[[str], str] | None = None,
    adjust: bool = True,
    replace_handlers: bool = True,
) -> list[logging.Logger]:
    """Start capturing records for ``handler``'s app; returns the captured loggers.

    :param names: the loggers captured with their children (``DIAGLOG_LOGGERS``); empty, ``""``
        or ``"root"``: every logger.
    :param level: records below it are not offered to the app (``DIAGLOG_LEVEL``).
    :param app_logger: ``app.logger``, whose Flask default handler gets a stand-in.
    :param redact: scrubs the stand-ins' text (the app's ``Redactor.text``).
    :param adjust: lower the captured loggers' level to reach ``level`` (``DIAGLOG_ADJUST_LEVELS``).
    :param replace_handlers: put the console stand-ins in place (``DIAGLOG_REPLACE_HANDLERS``).
    """
    global _taps
    every = not names or any(n in ("", "root") for n in names)
    handler.prefixes = () if every else tuple(dict.fromkeys(n for n in names if n))
    loggers = [logging.getLogger()] if every else [logging.getLogger(n) for n in handler.prefixes]
    handler.targets = tuple(loggers) if adjust else ()
    ref = weakref.ref(handler)
    with _locked():
        _install()
        _taps = (*_taps, ref)
        if adjust:
            for lg in loggers:
                _lower(lg, level)
    stand_ins: list[tuple[logging.Logger | None, EchoHandler]] = []
    lines = None
    if replace_handlers:
        lines = LineQueue("stderr")
        with _locked():
            stand_ins = stand_in(lines, redact or _same, app_logger, console=handler.console)
    weakref.finalize(handler, _detach, ref, tuple(loggers), stand_ins, lines)
    return loggers


def _same(text: str) -> str:
    return text
