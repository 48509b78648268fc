"""The console: lines echoed to stdout through a bounded queue that never blocks a request."""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
import time
from typing import TYPE_CHECKING, TextIO

from .render import render_event

if TYPE_CHECKING:
    from ..record import Event
    from .render import Renderer

__all__ = ["ConsoleSink"]


class ConsoleSink:
    """Echoes rendered lines to the console (stdout) through a bounded queue and a daemon thread.

    ``put`` never blocks: when the console is not read (a pipe nobody drains), the writer thread
    blocks in ``write(2)``, the queue fills, and further lines are dropped and counted in
    ``dropped``. The files are written before the console is offered the line, so they still get
    every line. The first drop of an episode is reported once on stderr (from a separate thread,
    as stderr may be that same unread pipe); once the console drains again, a line saying how
    many lines were dropped is written to it.
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
        self._stream = stream
        self.maxsize = maxsize
        #: Lines dropped because the queue was full (the console was not keeping up).
        self.dropped = 0
        #: Lines written to the console.
        self.written = 0
        self._announced = 0  # drops already reported on the console
        self._warned = 0  # value of ``dropped`` when stderr was last told about an episode
        self._q: queue.Queue[bytes] = queue.Queue(maxsize)
        self._thread: threading.Thread | None = None
        self._pid = -1
        self._start_lock = threading.Lock()

    def _fd(self) -> int:
        stream = self._stream if self._stream is not None else sys.stdout
        return stream.fileno()

    def __call__(self, ev: Event) -> None:
        if ev.level < self.level:
            return
        self.put(render_event(self.render, ev))

    def put(self, data: bytes) -> None:
        """Queue one line for the console; drop and count it if the queue is full."""
        if self._pid != os.getpid():
            self._start()
        try:
            self._q.put_nowait(data)
        except queue.Full:
            self.dropped += 1
            if self._warned <= self._announced:  # first drop since the console last drained
                self._warned = self.dropped
                threading.Thread(
                    target=self._warn, name="diaglog-console-warn", daemon=True
                ).start()

    def _warn(self) -> None:
        with contextlib.suppress(Exception):
            sys.stderr.write(
                "flask-diaglog: the console (stdout) is not being read; console lines are "
                "dropped and counted (see DiagLog.stats()), the log files still get every line\n"
            )
            sys.stderr.flush()

    def _start(self) -> None:
        with self._start_lock:
            if self._pid == os.getpid():
                return
            self._q = queue.Queue(self.maxsize)
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="diaglog-console", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        q = self._q
        while True:
            data = q.get()
            try:
                fd = self._fd()
                dropped = self.dropped
                if dropped > self._announced:
                    note = (
                        f"flask-diaglog: {dropped - self._announced} console lines were dropped\n"
                    )
                    _write_all(fd, note.encode())
                    self._announced = dropped
                _write_all(fd, data)
                self.written += 1
            except Exception:
                time.sleep(0.05)  # no console at all (closed stdout): keep draining the queue
            finally:
                q.task_done()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until queued lines are written (tests, shutdown). False on timeout."""
        deadline = time.monotonic() + timeout
        q = self._q
        while q.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
