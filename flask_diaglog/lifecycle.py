"""Process hooks, each registered once and at first use, never at import: what runs in a forked
child (``os.register_at_fork``) and at interpreter exit (``atexit``).

The writer, the console, the watchdog, the stack taker, the live bridge, the peers' publisher and
the JSON renderer each call :func:`at_fork` or :func:`at_exit` when their first object needs it.
A hook is known by the callables it registers (a bound method of the same object is the same
hook). No lock: two first callers at once register a hook twice, which is harmless for every
hook here (each resets state), and a lock held by a fork in that moment would stay held in the
child.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable

__all__ = ["at_exit", "at_fork"]

#: The hooks registered in this process (a forked child inherits them with the registrations).
_registered: set[tuple[str, Callable[[], object] | None, Callable[[], object] | None]] = set()


def at_fork(
    *, before: Callable[[], object] | None = None, after_in_child: Callable[[], object]
) -> None:
    """``os.register_at_fork(before=..., after_in_child=...)``, once per hook."""
    key = ("fork", before, after_in_child)
    if key in _registered:
        return
    _registered.add(key)
    if hasattr(os, "register_at_fork"):
        if before is not None:
            os.register_at_fork(before=before, after_in_child=after_in_child)
        else:
            os.register_at_fork(after_in_child=after_in_child)


def at_exit(fn: Callable[[], object]) -> None:
    """``atexit.register(fn)``, once per hook."""
    key = ("exit", fn, None)
    if key not in _registered:
        _registered.add(key)
        atexit.register(fn)
