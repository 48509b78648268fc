"""In-flight work across worker processes: one small state file per worker in the log directory.

Each process that serves the dashboard publishes its in-flight entries (see
:func:`flask_diaglog.inflight`) to ``inflight-<host>-<pid>.json`` in ``DIAGLOG_LOG_DIR`` once a
second, and :meth:`Peers.merged` reads every worker's file back, so whichever gunicorn worker
answers the dashboard shows the work of all of them.

* **Atomic.** A file is written to a temporary name and renamed over the old one, so a reader
  never sees half a file, and a process killed mid-write leaves at worst a stray temporary file
  that the next write of that pid replaces.
* **One thread per app, stopping with it.** The publishing thread holds only a weak reference
  to its :class:`Peers`; when the app (and so the ``Peers``) is discarded, or at interpreter
  exit, the thread stops and the file is removed. It is a daemon thread, which is safe because
  every write is atomic. A process forked after the thread started (gunicorn ``--preload``)
  starts its own thread for its own pid.
* **Stale files.** A file of this host whose pid no longer runs is removed by the reader; a
  file not rewritten for :data:`STALE_AFTER` seconds (a frozen process, another host that
  stopped) is ignored.
* **Bad files.** A state file that is not what :meth:`Peers.publish` writes (not a regular
  file, a dangling link, over :data:`MAX_STATE` bytes, not JSON, nested too deep, an entry of
  the wrong shape) is ignored and named in :attr:`Peers.ignored`; it never reaches a page, which
  names it instead. Text is read as
  :mod:`~flask_diaglog.linecheck` reads lines: a lone surrogate becomes the text ``\\udXXX``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from .lifecycle import at_exit, at_fork
from .linecheck import finite_number, well_formed, without_surrogates
from .readfile import open_regular

__all__ = ["MAX_STATE", "STALE_AFTER", "Peers"]

#: Seconds after which a state file that was not rewritten is ignored.
STALE_AFTER = 5.0
#: A state file larger than this is ignored (an entry takes a few hundred bytes).
MAX_STATE = 8 << 20
PREFIX = "inflight-"
_UNSAFE = re.compile(r"[^A-Za-z0-9.-]")

_all: weakref.WeakSet[Peers] = weakref.WeakSet()


def _after_fork() -> None:
    for peers in list(_all):
        peers._forked()


def _at_exit() -> None:
    for peers in list(_all):
        peers.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _run(ref: weakref.ReferenceType[Peers], stop: threading.Event, interval: float) -> None:
    while not stop.is_set():
        peers = ref()
        if peers is None:
            return
        with contextlib.suppress(Exception):  # a full disk must not end the loop
            peers.publish()
        del peers
        stop.wait(interval)


class Peers:
    """Publishes this process's in-flight work and reads every worker's.

    :param log_dir: the shared log directory.
    :param local: returns this process's in-flight entries (the registry's ``entries``).
    :param interval: seconds between two writes of this process's file.
    """

    def __init__(
        self, log_dir: str, local: Callable[[], list[dict[str, Any]]], interval: float = 1.0
    ) -> None:
        self.log_dir = log_dir
        self.local = local
        self.interval = interval
        self.host = socket.gethostname()
        self._safe_host = _UNSAFE.sub("_", self.host)[:64] or "host"
        self._pid = os.getpid()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        #: The names of the state files the last :meth:`merged` ignored as not state files.
        self.ignored: list[str] = []

    @property
    def path(self) -> str:
        """This process's state file."""
        return os.path.join(self.log_dir, f"{PREFIX}{self._safe_host}-{self._pid}.json")

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start publishing once a second (does nothing if already started in this process)."""
        if self._thread is not None and self._thread.is_alive():
            return
        at_fork(after_in_child=_after_fork)
        at_exit(_at_exit)
        _all.add(self)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_run,
            args=(weakref.ref(self), self._stop, self.interval),
            name=f"diaglog-peers-{self._pid}",
            daemon=True,
        )
        if self._finalizer is None:
            self._finalizer = weakref.finalize(self, _finish, self._stop, self.path)
        self._thread.start()

    def stop(self) -> None:
        """Stop publishing and remove this process's file."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)
        self._thread = None
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def _forked(self) -> None:
        was_running = self._thread is not None
        if self._finalizer is not None:
            self._finalizer.detach()  # it would remove the parent's file
        self._pid = os.getpid()
        self._thread = None
        self._finalizer = None
        if was_running:
            self.start()

    # -- writing and reading ------------------------------------------------------------------

    def publish(self) -> None:
        """Write this process's entries now (atomically)."""
        state = {"host": self.host, "pid": self._pid, "written": time.time()}
        state["inflight"] = self.local()
        text = json.dumps(state, default=str)
        fd, tmp = tempfile.mkstemp(prefix=".inflight-", suffix=".tmp", dir=self.log_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def merged(self) -> list[dict[str, Any]]:
        """Every worker's in-flight entries, oldest first: this process's live, the others' from
        their files (``elapsed_ms`` brought up to now; each entry carries ``host``)."""
        now = time.time()
        out = [{**without_surrogates(e), "host": self.host} for e in self.local()]
        try:
            names = os.listdir(self.log_dir)
        except OSError:
            names = []
        ignored = []
        for name in names:
            if not (name.startswith(PREFIX) and name.endswith(".json")):
                continue
            path = os.path.join(self.log_dir, name)
            try:
                with open_regular(path) as fh:
                    data = fh.read(MAX_STATE + 1)
            except OSError:  # a FIFO, a device, a dangling link: not a state file
                data = None
                if not os.path.lexists(path):
                    continue  # removed since the listing
            state = None if data is None else _state(data)
            if state is None:
                ignored.append(name)
                continue
            host, pid, written, entries = state
            if host == self.host and pid == self._pid:
                continue
            if host == self.host and not _alive(pid):
                with contextlib.suppress(OSError):
                    os.unlink(path)
                continue
            if now - written > STALE_AFTER:
                continue
            for e in entries:
                start = e.get("start")
                if start is not None:
                    e["elapsed_ms"] = round((now - start) * 1000.0, 3)
                e["host"] = host
                out.append(e)
        self.ignored = ignored
        out.sort(key=lambda e: e.get("start") or 0.0)
        return out


#: Entry keys that are numbers (``None`` or left out when there is none); the others of
#: :func:`~flask_diaglog.watchdog.entries` are checked by :func:`.linecheck.well_formed`.
_NUMBERS = ("start", "elapsed_ms", "thread_id")


def _state(data: bytes) -> tuple[str, int, float, list[dict[str, Any]]] | None:
    """``(host, pid, written, entries)`` of a state file's bytes, or ``None`` when they are not
    what :meth:`Peers.publish` writes."""
    if len(data) > MAX_STATE:
        return None
    try:
        state = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(state, dict):
        return None
    host, pid, written, entries = (state.get(k) for k in ("host", "pid", "written", "inflight"))
    if not (type(host) is str and type(pid) is int and 0 < pid < 1 << 31):
        return None
    if not finite_number(written) or type(entries) is not list or not all(map(_entry_ok, entries)):
        return None
    return without_surrogates(host), pid, float(written), without_surrogates(entries)


def _entry_ok(e: Any) -> bool:
    """Whether ``e`` is an entry as :func:`~flask_diaglog.watchdog.entries` makes one."""
    if type(e) is not dict or not well_formed(_given(e)):
        return False
    if not all(e.get(k) is None or finite_number(e[k]) for k in _NUMBERS):
        return False
    progress = e.get("progress")
    return progress is None or (type(progress) is dict and well_formed(_given(progress)))


def _given(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _finish(stop: threading.Event, path: str) -> None:
    stop.set()
    with contextlib.suppress(OSError):
        os.unlink(path)
