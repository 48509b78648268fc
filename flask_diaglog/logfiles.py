"""Log files: rendering, the multi-process-safe rotating writer, the logging bridge, the console.

Durability: every record is rendered to bytes and handed to the kernel with one ``os.write`` on an
``O_APPEND`` descriptor before the logging call returns. There is no user-space buffer, so a
SIGKILL loses nothing that was logged, and appends from many processes never tear or overwrite
each other.

Rotation across processes: each log file has a small sidecar ``.<name>.lock`` file. Rotation takes
an exclusive ``flock`` on it, re-checks that the file is still the one that was over the limit (so
two processes never rotate twice), shifts the backups, and bumps a generation counter stored in the
sidecar, which every process has ``mmap``-ed. Before each write a process compares that counter
with its own (about 80 ns) and reopens when another process rotated. A process that wrote into the
old file a moment before lands in ``.1``: late lines move with their file, they are never lost.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import logging
import mmap
import os
import queue
import shutil
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from .context import current_trace
from .events import Event

__all__ = [
    "ConsoleSink",
    "DiagLogHandler",
    "FileSink",
    "LogFile",
    "render_json",
    "render_plain",
]

# --------------------------------------------------------------------------------------------
# Rendering: two renderings of the same Event.
# --------------------------------------------------------------------------------------------


class _Clock:
    """Caches the per-second parts of timestamps; per line only milliseconds are formatted."""

    __slots__ = ("iso", "offset", "plain", "sec")

    def __init__(self) -> None:
        self.sec = -1
        self.plain = ""
        self.iso = ""
        self.offset = ""

    def refresh(self, sec: int) -> None:
        lt = time.localtime(sec)
        self.plain = time.strftime("%Y-%m-%d %H:%M:%S", lt)
        self.iso = time.strftime("%Y-%m-%dT%H:%M:%S", lt)
        off = lt.tm_gmtoff or 0
        sign = "+" if off >= 0 else "-"
        off = abs(off)
        self.offset = f"{sign}{off // 3600:02d}:{(off % 3600) // 60:02d}"
        self.sec = sec


_clock = _Clock()
_LEVEL_TAG = {
    logging.DEBUG: " | DEBUG | ",
    logging.INFO: " | INFO | ",
    logging.WARNING: " | WARNING | ",
    logging.ERROR: " | ERROR | ",
    logging.CRITICAL: " | CRITICAL | ",
}
# Characters that could split a record into two lines for some reader (str.splitlines treats all
# of these as line breaks), or drive a terminal: escaped so one record is always one line.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x20), 0x7F, 0x85)}
_ESCAPES.update({0x0A: "\\n", 0x0D: "\\r", 0x09: "\t", 0x2028: "\\u2028", 0x2029: "\\u2029"})


def escape_line(text: str) -> str:
    """Escape CR, LF and other line-breaking or control characters (tabs stay)."""
    if text.isprintable():
        return text
    return text.translate(_ESCAPES)


def format_ts(ts: float) -> str:
    """ISO 8601 local time with milliseconds and offset, e.g. ``2026-11-22T10:15:02.123+00:00``."""
    sec = int(ts)
    clock = _clock
    if sec != clock.sec:
        clock.refresh(sec)
    return f"{clock.iso}.{int((ts - sec) * 1000):03d}{clock.offset}"


def render_plain(ev: Event) -> bytes:
    """``2026-11-22 10:15:02.123 | INFO | logger | req=<id> job=<id or -> | message``."""
    ts = ev.ts
    sec = int(ts)
    clock = _clock
    if sec != clock.sec:
        clock.refresh(sec)
    tag = _LEVEL_TAG.get(ev.level) or f" | {logging.getLevelName(ev.level)} | "
    line = (
        f"{clock.plain}.{int((ts - sec) * 1000):03d}{tag}{ev.logger} | "
        f"req={ev.request_id or '-'} job={ev.job_id or '-'} | {ev.msg}"
    )
    if ev.exc:
        line = f"{line} | {ev.exc}"
    if not line.isprintable():
        line = line.translate(_ESCAPES)
    return (line + "\n").encode("utf-8", "backslashreplace")


def render_json(ev: Event) -> bytes:
    """One JSON object per line with the documented keys (see README)."""
    d = ev.to_dict()
    d["ts"] = format_ts(ev.ts)
    line = json.dumps(d, ensure_ascii=False, separators=(",", ":"), default=str)
    if not line.isprintable():
        # json.dumps escapes C0 controls already; these two are legal in JSON but break lines
        # for some readers.
        line = line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return (line + "\n").encode("utf-8", "backslashreplace")


RENDERERS: dict[str, Callable[[Event], bytes]] = {"plain": render_plain, "json": render_json}

# --------------------------------------------------------------------------------------------
# The writer.
# --------------------------------------------------------------------------------------------

_GEN = struct.Struct("=Q")
ErrorHook = Callable[["LogFile", "OSError | None"], None]


class LogFile:
    """An append-only log file that many threads and processes can share and rotate safely.

    ``write(data)`` is one ``os.write`` of a whole record. Failures (disk full, read-only file
    system, directory removed) never raise: they are counted in ``failed_writes``, reported through
    ``on_error`` once per outage, and the file is reopened on a later write.
    """

    def __init__(
        self,
        path: str,
        *,
        max_bytes: int = 0,
        backup_count: int = 0,
        compress: bool = False,
        on_error: ErrorHook | None = None,
    ) -> None:
        self.path = os.path.abspath(path)
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self.compress = compress
        self.on_error = on_error
        self.failed_writes = 0
        self.written = 0
        head, tail = os.path.split(self.path)
        self.lock_path = os.path.join(head, f".{tail}.lock")
        # How many bytes this process writes between size checks: small enough that N processes
        # overshoot max_bytes by little, large enough that fstat stays off the hot path.
        self._check_every = max(512, min(max_bytes // 64, 64 * 1024)) if max_bytes else 64 * 1024
        self._lock = threading.Lock()
        self._fd = -1
        self._ino = -1
        self._gen = 0
        self._since = 0
        self._broken = False
        self._retry_at = 0.0
        self._pid = os.getpid()
        self._lock_fd = -1
        self._mm: mmap.mmap | None = None
        self._compressor: threading.Thread | None = None
        self._pending: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._open()  # raises OSError at startup if the file cannot be created

    # -- opening ----------------------------------------------------------------------------

    def _open_sidecar(self) -> None:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if os.fstat(fd).st_size < _GEN.size:
                os.ftruncate(fd, _GEN.size)
            self._mm = mmap.mmap(fd, _GEN.size)
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd

    def _open(self) -> None:
        if self._lock_fd < 0:
            self._open_sidecar()
        assert self._mm is not None
        gen = _GEN.unpack_from(self._mm, 0)[0]
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        old, self._fd = self._fd, fd
        self._ino = os.fstat(fd).st_ino
        self._gen = gen
        self._since = 0
        if old >= 0:
            os.close(old)

    def _after_fork(self) -> None:
        # The child inherits descriptors and the mapping; only the thread and lock are stale.
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._compressor = None
        self._pending = queue.SimpleQueue()

    # -- writing ----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._pid != os.getpid():
            self._after_fork()
        with self._lock:
            try:
                if self._broken:
                    if time.monotonic() < self._retry_at:
                        self.failed_writes += 1
                        return
                    self._open()
                elif self._mm is not None and _GEN.unpack_from(self._mm, 0)[0] != self._gen:
                    self._open()
                view = memoryview(data)
                while view:
                    n = os.write(self._fd, view)
                    view = view[n:]
                self.written += 1
                if self._broken:
                    self._broken = False
                    self._report(None)
                self._since += len(data)
                if self._since >= self._check_every:
                    self._since = 0
                    self._check_size()
            except OSError as exc:
                self.failed_writes += 1
                self._retry_at = time.monotonic() + 0.5
                if not self._broken:
                    self._broken = True
                    self._report(exc)

    def _report(self, exc: OSError | None) -> None:
        hook = self.on_error
        if hook is None:
            if exc is not None:
                sys.stderr.write(f"flask-diaglog: cannot write {self.path}: {exc}\n")
            return
        with contextlib.suppress(Exception):
            hook(self, exc)

    def _check_size(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._open()  # removed from under us (logrotate, rm): start a new file
            return
        if st.st_ino != self._ino:
            self._open()
        elif self.max_bytes and st.st_size >= self.max_bytes:
            self._rotate()

    # -- rotation ---------------------------------------------------------------------------

    def _name(self, i: int, gz: bool = False) -> str:
        return f"{self.path}.{i}.gz" if gz else f"{self.path}.{i}"

    def _rotate(self) -> None:
        assert self._mm is not None
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                st = None
            # Only rotate the file we saw grow past the limit, and only if nobody did already.
            if st is not None and st.st_ino == self._ino and st.st_size >= self.max_bytes:
                n = self.backup_count
                if n > 0:
                    for gz in (False, True):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(self._name(n, gz))
                    for i in range(n - 1, 0, -1):
                        for gz in (False, True):
                            with contextlib.suppress(FileNotFoundError):
                                os.rename(self._name(i, gz), self._name(i + 1, gz))
                    os.rename(self.path, self._name(1))
                else:
                    os.unlink(self.path)
                gen = _GEN.unpack_from(self._mm, 0)[0] + 1
                _GEN.pack_into(self._mm, 0, gen)
                if self.compress and n > 0:
                    self._schedule_compress(self._name(1))
            self._open()
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    # -- compression (off the request path) -------------------------------------------------

    def _schedule_compress(self, path: str) -> None:
        with contextlib.suppress(OSError):
            self._pending.put(path)
        if self._compressor is None or not self._compressor.is_alive():
            t = threading.Thread(target=self._compress_loop, name="diaglog-gzip", daemon=True)
            self._compressor = t
            t.start()

    def _compress_loop(self) -> None:
        while True:
            try:
                path = self._pending.get(timeout=5.0)
            except queue.Empty:
                return
            time.sleep(0.2)  # let writers that checked the generation a moment ago finish
            with contextlib.suppress(Exception):
                self.compress_file(path)

    def compress_file(self, path: str) -> str | None:
        """Gzip one rotated backup. The ``.gz`` appears only when complete (temp file + rename).

        The backup may be shifted to a higher number while it is compressed; it is found again by
        its inode under the rotation lock. Returns the ``.gz`` path, or ``None`` if it vanished.
        """
        try:
            ino = os.stat(path).st_ino
        except FileNotFoundError:
            return None
        tmp = f"{path}.{os.getpid()}.gz.part"
        with open(path, "rb") as src, open(tmp, "wb") as raw:
            with gzip.GzipFile(filename=os.path.basename(path), mode="wb", fileobj=raw) as gz:
                shutil.copyfileobj(src, gz, 1024 * 1024)
            raw.flush()
            os.fsync(raw.fileno())
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            for i in range(1, self.backup_count + 1):
                plain = self._name(i)
                try:
                    if os.stat(plain).st_ino != ino:
                        continue
                except FileNotFoundError:
                    continue
                final = self._name(i, gz=True)
                os.rename(tmp, final)
                os.unlink(plain)
                return final
            os.unlink(tmp)
            return None
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def wait_compressed(self, timeout: float = 10.0) -> bool:
        """Block until the background compressor is idle (for tests and clean shutdown)."""
        t = self._compressor
        deadline = time.monotonic() + timeout
        while t is not None and t.is_alive() and not self._pending.empty():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            if self._mm is not None:
                self._mm.close()
                self._mm = None
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1

    def __repr__(self) -> str:
        return f"<LogFile {self.path}>"


# --------------------------------------------------------------------------------------------
# Sinks.
# --------------------------------------------------------------------------------------------


class FileSink:
    """Routes events to ``requests.log`` or ``jobs.log``; ERROR and above also to ``errors.log``."""

    sink_name = "files"

    def __init__(
        self,
        log_dir: str,
        *,
        fmt: str = "plain",
        level: int = logging.INFO,
        max_bytes: int = 0,
        backup_count: int = 0,
        compress: bool = False,
        on_error: ErrorHook | None = None,
    ) -> None:
        self.render = RENDERERS[fmt]
        self.level = level

        def open_file(name: str) -> LogFile:
            return LogFile(
                os.path.join(log_dir, name),
                max_bytes=max_bytes,
                backup_count=backup_count,
                compress=compress,
                on_error=on_error,
            )

        self.requests = open_file("requests.log")
        self.jobs = open_file("jobs.log")
        self.errors = open_file("errors.log")
        self.files = {"requests": self.requests, "jobs": self.jobs}

    def __call__(self, ev: Event) -> None:
        if ev.level < self.level:
            return
        data = self.render(ev)
        self.files[ev.target].write(data)
        if ev.level >= logging.ERROR:
            self.errors.write(data)

    @property
    def failed_writes(self) -> int:
        return sum(f.failed_writes for f in (self.requests, self.jobs, self.errors))

    def close(self) -> None:
        for f in (self.requests, self.jobs, self.errors):
            f.close()


class ConsoleSink:
    """Echoes rendered lines to a stream through a bounded queue and a daemon thread.

    ``put`` never blocks: when the stream is not read (a pipe nobody drains), the queue fills and
    further lines are dropped and counted in ``dropped``. The first drop of an episode is reported
    once on stderr; when the stream drains again, a line saying how many were dropped is written.
    """

    sink_name = "console"

    def __init__(
        self,
        render: Callable[[Event], bytes],
        *,
        stream: TextIO | None = None,
        maxsize: int = 10_000,
        level: int = logging.INFO,
    ) -> None:
        self.render = render
        self.level = level
        self._stream = stream
        self.maxsize = maxsize
        self.dropped = 0
        self._unreported = 0
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
        self.put(self.render(ev))

    def put(self, data: bytes) -> None:
        if self._pid != os.getpid():
            self._start()
        try:
            self._q.put_nowait(data)
        except queue.Full:
            self.dropped += 1
            self._unreported += 1
            if self._unreported == 1:
                with contextlib.suppress(Exception):
                    sys.stderr.write(
                        "flask-diaglog: console output is not being read; console lines are "
                        "dropped and counted (the log files still get every line)\n"
                    )

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
                if self._unreported:
                    n, self._unreported = self._unreported, 0
                    os.write(fd, f"flask-diaglog: {n} console lines were dropped\n".encode())
                os.write(fd, data)
            except Exception:
                time.sleep(0.05)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until queued lines are written (tests, shutdown). False on timeout."""
        deadline = time.monotonic() + timeout
        while not self._q.empty():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True


# --------------------------------------------------------------------------------------------
# The logging bridge.
# --------------------------------------------------------------------------------------------


class DiagLogHandler(logging.Handler):
    """A ``logging.Handler`` that turns records into diaglog events.

    Attached by :class:`~flask_diaglog.DiagLog` to the app's loggers, it adds the request and job
    ids of the current request or background job and hands the event to the app's dispatch.

    It also works on its own, for example from ``logging.config.dictConfig``::

        "handlers": {"safe": {"()": "flask_diaglog.DiagLogHandler",
                              "filename": "logs/app.log", "max_bytes": 10485760,
                              "backup_count": 5, "format": "json"}}

    and then writes to that file with the same multi-process-safe writer and line formats.
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
        dispatch: Callable[[Event], None] | None = None,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        super().__init__(level)
        if dispatch is None:
            if filename is None:
                raise ValueError("DiagLogHandler needs a filename (or a dispatch callable)")
            if format not in RENDERERS:
                raise ValueError(f"format={format!r} is not one of 'plain', 'json'")
            directory = os.path.dirname(os.path.abspath(filename))
            os.makedirs(directory, exist_ok=True)
            self.file: LogFile | None = LogFile(
                filename, max_bytes=max_bytes, backup_count=backup_count, compress=compress
            )
            render = RENDERERS[format]
            file = self.file

            def write(ev: Event) -> None:
                file.write(render(ev))

            dispatch = write
        else:
            self.file = None
        self._dispatch = dispatch
        self._redact = redact

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "_diaglog_seen", None) is self:
            return  # the same record through a parent logger we are also attached to
        try:
            record._diaglog_seen = self
            trace = current_trace()
            if trace is not None and record.exc_info and record.exc_info[1] is trace.error:
                return  # already written as the request_error line, with its traceback
            self._dispatch(self.to_event(record, trace))
        except RecursionError:  # pragma: no cover
            raise
        except Exception:
            self.handleError(record)

    def to_event(self, record: logging.LogRecord, trace: Any) -> Event:
        msg = record.getMessage()
        exc = None
        if record.exc_info:
            exc = logging.Formatter().formatException(record.exc_info)
        elif record.exc_text:
            exc = record.exc_text
        if record.stack_info:
            exc = f"{exc}\n{record.stack_info}" if exc else record.stack_info
        redact = self._redact
        if redact is not None:
            msg = redact(msg)
            if exc:
                exc = redact(exc)
        if trace is not None:
            rid, jid = trace.request_id, trace.job_id
            target = "jobs" if trace.kind == "job" else "requests"
        else:
            rid = getattr(record, "request_id", None)
            jid = getattr(record, "job_id", None)
            target = "requests"
        ev = Event(
            "log",
            record.levelno,
            record.name,
            msg,
            rid,
            jid,
            {},
            target=target,
            exc=exc,
            trace=trace,
            ts=record.created,
        )
        ev.thread = record.threadName or ev.thread
        return ev

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        super().close()
