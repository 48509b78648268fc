"""The console: everything diaglog prints, through bounded queues that never block a request.

This module owns:

* :class:`LineQueue`, a bounded queue of lines and the daemon thread that writes them to stdout or
  stderr. ``put`` never blocks: when nobody reads the stream (a full pipe), the thread blocks in
  ``write(2)``, the queue fills, and further lines are dropped and counted. The thread stops when
  its owner is discarded (:meth:`LineQueue.stop`) and lines still queued at interpreter exit get a
  short, bounded chance to be written.
* :class:`ConsoleSink`, the ``DIAGLOG_CONSOLE`` subscriber: each record, rendered by the files'
  renderer (so redacted like the files), on stdout.
* :class:`EchoHandler`, a ``logging.Handler`` that stands in for the handlers that would otherwise
  write the app's lines to stderr synchronously (Flask's default handler, werkzeug's request log,
  ``logging.lastResort``): it prints the same text, redacted, through a :class:`LineQueue`.
  :func:`stand_in` puts them in place, :func:`put_back` restores the originals.
* :data:`muted` and :data:`ECHOED`, how the logging bridge and these two agree that each record is
  printed once: a record the console showed is not printed again by a stand-in, and a record an
  app's own console handler prints is not echoed again by the console.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from flask.logging import default_handler, wsgi_errors_stream

from ..lifecycle import at_exit
from .render import render_event

if TYPE_CHECKING:
    from ..record import Event
    from .render import Renderer

__all__ = [
    "ECHOED",
    "ConsoleSink",
    "EchoHandler",
    "LineQueue",
    "flush_all",
    "is_access_line",
    "muted",
    "put_back",
    "stand_in",
]

#: Set on a ``logging.LogRecord`` once a diaglog console has queued it: stand-ins skip it.
ECHOED = "_diaglog_echoed"


class _Muted(threading.local):
    """True while the logging bridge records a record that one of the app's own console handlers
    prints anyway: the console sink leaves that one out (it would appear twice)."""

    active = False


#: Per thread: the ``log`` record being recorded is printed by an app's own handler.
muted = _Muted()

_queues: weakref.WeakSet[LineQueue] = weakref.WeakSet()


def is_access_line(record: logging.LogRecord) -> bool:
    """A server's per-request access line (werkzeug's request log, ``gunicorn.access``): the
    trail's ``request_start``/``request_end`` lines already say what it says."""
    name = record.name
    if name == "gunicorn.access":
        return True
    msg = record.msg
    return name == "werkzeug" and isinstance(msg, str) and msg.endswith('"%s" %s %s')


class LineQueue:
    """Bounded lines for one console stream (``"stdout"`` or ``"stderr"``), written by a thread.

    :param target: the ``sys`` attribute written to when a line names no stream of its own.
    :param stream: a fixed stream instead of ``sys.<target>`` (tests).
    :param warn: said once per episode on stderr (from a separate thread) when lines are dropped.
    """

    def __init__(
        self,
        target: str = "stdout",
        *,
        stream: TextIO | None = None,
        maxsize: int = 10_000,
        warn: str | None = None,
    ) -> None:
        self.target = target
        self.stream = stream
        self.maxsize = maxsize
        self.warn = warn
        #: Lines dropped because the queue was full (the stream was not keeping up).
        self.dropped = 0
        #: Lines written.
        self.written = 0
        self._announced = 0  # drops already reported on the stream itself
        self._warned = 0  # value of ``dropped`` when stderr was last told about an episode
        self._q: queue.Queue[tuple[Any, bytes] | None] = queue.Queue(maxsize)
        self._pid = -1
        self._stopped = False
        self._start_lock = threading.Lock()
        _queues.add(self)

    def put(self, data: bytes, stream: Any = None) -> None:
        """Queue one line (for ``stream``, default ``sys.<target>``); drop and count it if full."""
        if self._pid != os.getpid():
            if self._stopped:
                return
            self._start()
        try:
            self._q.put_nowait((stream, data))
        except queue.Full:
            self.dropped += 1
            if self.warn and self._warned <= self._announced:  # first drop of an episode
                self._warned = self.dropped
                threading.Thread(
                    target=_say, args=(self.warn,), name="diaglog-console-warn", daemon=True
                ).start()

    def _start(self) -> None:
        with self._start_lock:
            if self._pid == os.getpid():
                return
            self._q = queue.Queue(self.maxsize)  # a forked child starts with a queue of its own
            self._pid = os.getpid()
            # The thread holds this queue, never its owner: the owner can be collected.
            threading.Thread(target=self._run, name=f"diaglog-{self.target}", daemon=True).start()
            at_exit(flush_all)

    def _run(self) -> None:
        q = self._q
        while True:
            item = q.get()
            try:
                if item is None:
                    return
                stream, data = item
                out = stream if stream is not None else self.stream or getattr(sys, self.target)
                dropped = self.dropped
                if dropped > self._announced:
                    note = (
                        f"flask-diaglog: {dropped - self._announced} console lines were dropped\n"
                    )
                    _write(out, note.encode())
                    self._announced = dropped
                _write(out, data)
                self.written += 1
            except Exception:
                time.sleep(0.05)  # no console at all (a closed stream): keep draining the queue
            finally:
                q.task_done()
            if self._stopped and q.empty():
                return

    def stop(self) -> None:
        """Write what is queued, then end the thread (its owner is gone)."""
        self._stopped = True
        with contextlib.suppress(queue.Full):
            self._q.put_nowait(None)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until queued lines are written (tests, shutdown). False on timeout."""
        deadline = time.monotonic() + timeout
        q = self._q
        while q.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True


class ConsoleSink:
    """Echoes each record to the console (stdout), rendered like the file line, redacted alike.

    A subscriber of the recorder (``DIAGLOG_CONSOLE``). ``put`` never blocks (see
    :class:`LineQueue`): the files are written before the console is offered the line, so they
    still get every line. The first drop of an episode is reported once on stderr; once the console
    drains again, a line saying how many lines were dropped is written to it. A ``log`` record that
    one of the app's own handlers prints to the console anyway is left out (see :data:`muted`).
    """

    sink_name = "console"

    def __init__(
        self,
        render: Renderer,
        *,
        stream: TextIO | None = None,
        maxsize: int = 10_000,
        level: int = 20,
    ) -> None:
        self.render = render
        self.level = level
        self.lines = LineQueue(
            "stdout",
            stream=stream,
            maxsize=maxsize,
            warn="flask-diaglog: the console (stdout) is not being read; console lines are "
            "dropped and counted (see DiagLog.stats()), the log files still get every line\n",
        )
        weakref.finalize(self, self.lines.stop)

    @property
    def dropped(self) -> int:
        """Lines dropped because the queue was full (the console was not keeping up)."""
        return self.lines.dropped

    @property
    def written(self) -> int:
        """Lines written to the console."""
        return self.lines.written

    def __call__(self, ev: Event) -> None:
        if ev.level < self.level or (muted.active and ev.kind == "log"):
            return
        self.lines.put(render_event(self.render, ev))

    def put(self, data: bytes) -> None:
        """Queue one line for the console; drop and count it if the queue is full."""
        self.lines.put(data)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until queued lines are written (tests, shutdown). False on timeout."""
        return self.lines.flush(timeout)


class EchoHandler(logging.Handler):
    """Prints what the handler it stands in for would print, redacted, without blocking.

    :param lines: the queue its lines go through (one per app, on stderr).
    :param redact: scrubs secrets from the formatted text (the app's ``Redactor.text``).
    :param role: what it stands in for: ``"flask"`` (Flask's ``default_handler``), ``"werkzeug"``
        (werkzeug's request log handler) or ``"last_resort"`` (``logging.lastResort``).
    :param stream: returns the stream to print to, resolved when the record is emitted (Flask's
        ``wsgi_errors_stream``); default ``sys.stderr``.
    :param drop_access: leave out werkzeug's access lines (the console shows ``request_end``).
    :param defer: print only when no other handler of the record's logger chain takes the record
        (werkzeug adds its handler only then).
    """

    def __init__(
        self,
        lines: LineQueue,
        redact: Callable[[str], str],
        role: str,
        *,
        stream: Callable[[], Any] | None = None,
        formatter: logging.Formatter | None = None,
        level: int = logging.NOTSET,
        drop_access: bool = False,
        defer: bool = False,
    ) -> None:
        super().__init__(level)
        self.lines = lines
        self.redact = redact
        self.role = role
        self.stream = stream
        self.drop_access = drop_access
        self.defer = defer
        #: The handler this one replaced (restored when the app is discarded), if any.
        self.replaced: logging.Handler | None = None
        #: Set when its app is gone: it is skipped when handlers are put back.
        self.dead = False
        if formatter is not None:
            self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, ECHOED, False):
            return  # the diaglog console showed it
        if self.drop_access and is_access_line(record):
            return
        if self.defer and _taken_elsewhere(record):
            return
        try:
            text = self.redact(self.format(record)) + "\n"
            stream = self.stream() if self.stream is not None else None
            self.lines.put(text.encode("utf-8", "backslashreplace"), stream)
        except Exception:
            self.handleError(record)


def _taken_elsewhere(record: logging.LogRecord) -> bool:
    """Another (non-stand-in) handler of the record's logger chain takes a record of its level."""
    c: logging.Logger | None = logging.getLogger(record.name)
    while c is not None:
        for h in c.handlers:
            if not isinstance(h, EchoHandler) and h.level <= record.levelno:
                return True
        c = c.parent if c.propagate else None
    return False


def _write(stream: Any, data: bytes) -> None:
    try:
        fd = stream.fileno()
    except Exception:  # no descriptor (a wrapper such as gunicorn's wsgi.errors, a test capture)
        stream.write(data.decode("utf-8", "replace"))
        stream.flush()
        return
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _say(text: str) -> None:
    with contextlib.suppress(Exception):
        sys.stderr.write(text)
        sys.stderr.flush()


def flush_all() -> None:
    """At interpreter exit: give queued lines up to a second in all to reach their stream."""
    deadline = time.monotonic() + 1.0
    for q in list(_queues):
        q.flush(max(0.0, deadline - time.monotonic()))


# -- stand-ins --------------------------------------------------------------------------------


def stand_in(
    lines: LineQueue,
    redact: Callable[[str], str],
    app_logger: logging.Logger | None,
    *,
    console: bool,
) -> list[tuple[logging.Logger | None, EchoHandler]]:
    """Put stand-ins in place of the handlers that would print an app's lines to stderr
    synchronously: Flask's ``default_handler`` on ``app_logger``, werkzeug's handler (or where
    werkzeug would add it) and ``logging.lastResort``. Returns where each went (``None``: the last
    resort), for :func:`put_back`. The caller holds the logging bridge's lock.

    :param console: the app has a diaglog console: werkzeug's access lines are left out (the
        console shows ``request_end``), and records the console showed are not printed again.
    """
    out: list[tuple[logging.Logger | None, EchoHandler]] = []
    if app_logger is not None:
        flask = EchoHandler(
            lines,
            redact,
            "flask",
            stream=_wsgi_errors,
            formatter=default_handler.formatter,
            level=default_handler.level,
        )
        if _replace(app_logger, flask, lambda h: h is default_handler):
            out.append((app_logger, flask))
    werkzeug = logging.getLogger("werkzeug")
    echo = EchoHandler(lines, redact, "werkzeug", drop_access=console, defer=True)
    installed = _replace(werkzeug, echo, _is_werkzeug_handler)
    if not installed and all(isinstance(h, EchoHandler) for h in werkzeug.handlers):
        werkzeug.addHandler(echo)  # werkzeug adds its own handler on first use otherwise
        installed = True
    if installed:
        out.append((werkzeug, echo))
    last = logging.lastResort
    if last is not None:
        resort = EchoHandler(lines, redact, "last_resort", level=last.level)
        resort.replaced = last
        logging.lastResort = resort
        out.append((None, resort))
    return out


def _replace(
    lg: logging.Logger, echo: EchoHandler, original: Callable[[logging.Handler], bool]
) -> bool:
    """Put ``echo`` where ``lg`` has the original handler, or a stand-in of the same role."""
    for i, h in enumerate(lg.handlers):
        if original(h) or (isinstance(h, EchoHandler) and h.role == echo.role):
            echo.replaced = h
            lg.handlers[i] = echo
            return True
    return False


def put_back(where: logging.Logger | None, echo: EchoHandler) -> None:
    """A stand-in's app is gone: take it out of ``where`` (``None``: the last resort) if it is
    still there, and put back what it replaced (skipping stand-ins of apps gone too)."""
    echo.dead = True
    back = echo.replaced
    while isinstance(back, EchoHandler) and back.dead:
        back = back.replaced
    if where is None:
        if logging.lastResort is echo:
            logging.lastResort = back
        return
    for i, h in enumerate(where.handlers):
        if h is echo:
            if back is None:
                del where.handlers[i]
            else:
                where.handlers[i] = back
            return


def _is_werkzeug_handler(h: logging.Handler) -> bool:
    """werkzeug's own request log handler (added by werkzeug on first use)."""
    return type(h).__name__ == "_ColorStreamHandler" and type(h).__module__.startswith("werkzeug")


def _wsgi_errors() -> Any:
    """Where Flask's default handler writes: the request's ``wsgi.errors``, else stderr."""
    return wsgi_errors_stream._get_current_object()
