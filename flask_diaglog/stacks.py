"""The threads' stacks: taken with the garbage collector held off, named, and written as text.

The hang watchdog and :func:`flask_diaglog.inflight` (``stacks=True``) show the Python stack of
the thread running some work. :func:`thread_frames` takes every thread's current frame,
:func:`thread_names` their names, and :func:`format_stack` writes one stack in the layout of a
traceback.
"""

from __future__ import annotations

import gc
import sys
import threading
import traceback
from types import FrameType

from .lifecycle import at_fork

__all__ = ["STACK_LIMIT", "format_stack", "thread_frames", "thread_names"]

#: Innermost frames shown in a hang report (a stack deeper than this is cut at the outer end).
STACK_LIMIT = 100


def thread_names() -> dict[int, str]:
    """Thread id to name, for the threads of this process."""
    return {t.ident: t.name for t in threading.enumerate() if t.ident is not None}


def format_stack(frame: FrameType | None, thread: int, names: dict[int, str]) -> str:
    """The stack of one thread as text, in the layout of a traceback."""
    label = f"{names.get(thread, '?')!r} (id {thread})"
    if frame is None:
        return (
            f"Stack of thread {label} unavailable: it is not a running OS thread of this process "
            "(a greenlet, or work that just ended)"
        )
    lines = traceback.format_stack(frame, limit=STACK_LIMIT)
    return f"Stack of thread {label}, most recent call last:\n{''.join(lines).rstrip()}"


class _Frames:
    """Takes the threads' frames with the garbage collector held off (:func:`thread_frames`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._was_enabled = False  # the collector's state before the current call, under _lock

    def take(self) -> dict[int, FrameType]:
        with self._lock:
            at_fork(after_in_child=self.after_fork)  # at the first take, not at import
            self._was_enabled = gc.isenabled()
            gc.disable()
            try:
                return sys._current_frames()
            finally:
                if self._was_enabled:
                    gc.enable()

    def after_fork(self) -> None:
        """In a forked child: a fork made while another thread was taking frames left the
        collector off and the lock held, with no thread to undo either."""
        if self._lock.locked():
            self._lock = threading.Lock()
            if self._was_enabled:
                gc.enable()


def thread_frames() -> dict[int, FrameType]:
    """``sys._current_frames()`` with the garbage collector held off while it runs.

    It makes a frame object for each thread while it holds the interpreter's thread list. On
    CPython 3.11 before 3.11.9, and older versions (gh-106883; 3.12 collects only between
    bytecodes), a collection that starts there (any allocation may start one) and frees a
    ``threading.local`` (every app has some) waits for that same list: the whole process stops,
    for good, in the watchdog meant to report hangs. Callers here are serialized, so one cannot
    turn the collector back on while another is inside; a child forked meanwhile gets the
    collector back as it was.
    """
    return _frames.take()


_frames = _Frames()
