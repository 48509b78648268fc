"""A task whose pool process the worker terminates while it runs (Celery's prefork pool:
``revoke(terminate=True)``, its hard time limit, a cold shutdown).

Two processes see that end, and each does its part once:

* the **pool process** (the child) gets the signal as ``SystemExit`` from billiard's handler:
  :func:`terminated_exit` turns it into a :class:`TaskTerminated` that says why, for the task's
  ``job_end``, and the run frees its part of the job as it unwinds (as any run that raised);
* the **main process** writes the task's last line (``outcome`` ``revoked`` or ``time_limit``)
  and gives the task's part of the job up only once the child has exited (:func:`when_gone`),
  for the child that could not free it (killed with SIGKILL, or past the 0.1 s billiard grants
  after SIGTERM): a duplicate cannot start while the task still runs, and the child's own
  release never finds its job already freed.

Before it kills a child for its hard time limit, the main process notes the child's pid in a
page of memory shared with the pool processes (:func:`note_time_limit`, set up at worker start
by :func:`share_notes`), so the child's ``job_end`` can say so rather than guess from the clock.
"""

from __future__ import annotations

import mmap
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = [
    "TaskTerminated",
    "note_time_limit",
    "share_notes",
    "signal_name",
    "terminated_exit",
    "when_gone",
]


class TaskTerminated(SystemExit):
    """The ``SystemExit`` a terminated pool process exits with, saying why: the exit code (its
    ``code``) is billiard's, the text (``str()``) is for the task's ``job_end``."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(code)
        self.why = why

    def __str__(self) -> str:
        return self.why

    def __reduce__(self) -> tuple[type[TaskTerminated], tuple[Any, str]]:
        return type(self), (self.code, self.why)


def signal_name(signum: Any) -> str:
    """``SIGTERM`` for 15 (also ``-15`` or ``"15"``, as Celery passes it); ``signal 99`` for a
    number that names no signal."""
    try:
        number = abs(int(signum))
        return signal.Signals(number).name
    except (TypeError, ValueError):
        return f"signal {signum}"


def terminated_exit(exc: SystemExit, hard_limit: Any) -> TaskTerminated | None:
    """In a pool process: the :class:`TaskTerminated` for ``exc`` when billiard's handler
    raised it (the process got a termination signal), else ``None`` (the task's own
    ``sys.exit()``)."""
    code = exc.code
    if isinstance(exc, TaskTerminated) or not isinstance(code, int) or not -256 < code < 0:
        return None
    fired = getattr(sys.modules.get("billiard.common"), "terminate_handler_fired", None)
    if fired is not None and not fired():
        return None
    if _noted(os.getpid()):
        why = f"killed by its hard time limit ({hard_limit}s)"
    else:
        name = signal_name(256 + code)
        why = (
            f"terminated by {name} while it ran (revoked with terminate=True, or a cold "
            "shutdown of the worker)"
        )
    return TaskTerminated(code, why)


# -- notes shared with the pool processes --------------------------------------------------------

_SLOTS = 64
_lock = threading.Lock()
_notes: list[Any] = []  # [memoryview of int32 slots, next slot], once shared
_next = [0]


def share_notes() -> None:
    """Main worker process, before its pool starts: the page the pool processes forked from now
    on share with it (anonymous, shared memory: no file, gone with the processes)."""
    if not _notes:
        page = mmap.mmap(-1, _SLOTS * 4)
        _notes.append(memoryview(page).cast("i"))


def note_time_limit(pid: int | None) -> None:
    """Main worker process: pool process ``pid`` is about to be killed for its hard time
    limit (before billiard sends the signal)."""
    if not _notes or not pid:
        return
    slots = _notes[0]
    with _lock:
        free = next((i for i in range(_SLOTS) if slots[i] in (0, pid)), None)
        if free is None:  # 64 kills at once: the oldest note goes
            free = _next[0]
            _next[0] = (free + 1) % _SLOTS
        slots[free] = pid


def _forget(pid: int) -> None:
    if _notes:
        slots = _notes[0]
        with _lock:
            for i in range(_SLOTS):
                if slots[i] == pid:
                    slots[i] = 0


def _noted(pid: int) -> bool:
    return bool(_notes) and pid in _notes[0].tolist()


# -- waiting in the main process until a pool process has exited ---------------------------------


def when_gone(pid: int | None, fn: Callable[[], None]) -> None:
    """Main worker process: call ``fn()`` once the pool process ``pid`` has exited, from the
    worker's event loop (a pidfd that becomes readable when the process ends), without
    blocking it. ``fn()`` is called at once when the process is gone already, is this one
    (threads, solo, gevent pools), or cannot be waited for (no event loop: the prefork pool
    without one; no ``os.pidfd_open``: not Linux 5.3+)."""
    watch = _watch(pid)
    if watch is None:
        fn()
        return
    hub, fd, gone_pid = watch

    def gone(*_: Any) -> None:
        hub.remove_reader(fd)
        os.close(fd)
        _forget(gone_pid)
        fn()

    hub.add_reader(fd, gone)


def _watch(pid: int | None) -> tuple[Any, int, int] | None:
    pidfd_open = getattr(os, "pidfd_open", None)
    if not pid or pid == os.getpid() or pidfd_open is None:
        return None
    from kombu.asynchronous import get_event_loop

    hub = get_event_loop()
    if hub is None:
        return None
    try:
        fd = pidfd_open(pid)
    except OSError:  # gone and reaped already
        return None
    return hub, fd, pid
