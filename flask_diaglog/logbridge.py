"""The bridge from :mod:`logging` into the trail: a ``logging.Handler`` that records ``log`` lines.

:class:`DiagLogHandler` turns each record into one :meth:`Recorder.record` call with the request
and job ids of the current request or background job. ``DiagLog`` attaches one per app (an
:class:`AppHandler`) to the app's loggers; on its own, built with a file name (for example from
``logging.config.dictConfig``), it writes that one file with the same writer and line layouts.
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Any

from flask import current_app, has_app_context

from .context import Trace, current_trace
from .files import SingleFile
from .files.render import RENDERERS
from .files.writer import LogFile
from .record import Recorder

__all__ = ["AppHandler", "DiagLogHandler", "attach"]


class DiagLogHandler(logging.Handler):
    """A ``logging.Handler`` that writes records as diaglog ``log`` lines.

    On its own, for example from ``logging.config.dictConfig``::

        "handlers": {"safe": {"()": "flask_diaglog.DiagLogHandler",
                              "filename": "logs/app.log", "max_bytes": 10485760,
                              "backup_count": 5, "format": "json"}}

    it writes to that file with the same multi-process-safe writer and line formats, adding the
    request and job ids of the current request or background job.

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
            recorder = Recorder(files=SingleFile(self.file), render=RENDERERS[format], level=0)
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

    def _record(self, rec: Recorder, trace: Trace | None, record: logging.LogRecord) -> None:
        if getattr(record, "_diaglog_seen", None) is self:
            return  # the same record through a parent logger we are also attached to
        try:
            record._diaglog_seen = self
            if record.exc_info and trace is not None and record.exc_info[1] is trace.error:
                return  # already written as the request_error line, with its traceback
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
        except RecursionError:  # pragma: no cover
            raise
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        super().close()


#: The most recently attached app handler: owns log records that belong to no app context.
_newest: weakref.ReferenceType[Recorder] | None = None


class AppHandler(DiagLogHandler):
    """The handler diaglog attaches to an app's loggers.

    When ``create_app()`` runs twice in one process (tests do), both apps' handlers sit on the same
    logger. Each record is therefore written only by the app it belongs to: the app of the current
    request or job, else of the current app context, else the most recently initialised app.
    It holds its recorder weakly: a handler left on a global logger must not keep a discarded app
    (and its open log files) alive.
    """

    def __init__(self, recorder: Recorder, level: int) -> None:
        logging.Handler.__init__(self, level)
        self.file = None
        self.recorder_ref = weakref.ref(recorder)
        global _newest
        _newest = self.recorder_ref

    def emit(self, record: logging.LogRecord) -> None:
        rec = self.recorder_ref()
        if rec is None:
            return  # its app is gone; pruned from the logger when the next app attaches
        trace = current_trace()
        if trace is not None:
            if trace.rec is not rec:
                return
        elif has_app_context():
            if current_app._get_current_object() is not rec.sender:  # type: ignore[attr-defined]
                return
        elif _newest is None or _newest() is not rec:
            return
        self._record(rec, trace, record)


def attach(handler: AppHandler, names: list[str], level: int) -> list[logging.Logger]:
    """Attach ``handler`` to the loggers ``names`` (``""`` or ``root`` for the root logger),
    skipping any logger whose ancestor is also in the list (it would see each record twice).
    Handlers of discarded apps found on those loggers are removed. Returns the loggers."""
    resolved = sorted({"" if n in ("root", "") else n for n in names}, key=len)
    chosen: list[str] = []
    for name in resolved:
        if any(p == "" or name == p or name.startswith(p + ".") for p in chosen):
            continue
        chosen.append(name)
    loggers = []
    for name in chosen:
        lg = logging.getLogger(name) if name else logging.getLogger()
        if name and lg.level == logging.NOTSET:
            lg.setLevel(level)  # so app.logger.info(...) is not filtered by root's WARNING
        for h in list(lg.handlers):
            if isinstance(h, AppHandler) and h.recorder_ref() is None:
                lg.removeHandler(h)  # left behind by an app that no longer exists
        lg.addHandler(handler)
        loggers.append(lg)
    return loggers
