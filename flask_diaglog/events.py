"""The one event record, and the one dispatch that hands it to every sink in a fixed order.

Sinks are plain callables ``sink(event) -> None``: the file writer, the blinker signals, the
in-flight registry, the live bridge and the console. A sink that raises is counted, reported once
on stderr
(and in ``errors.log`` when the file sink still works) and skipped; the request never sees it.

While every sink is one the request hooks can stand in for (:data:`DIRECT_SINKS`) and nobody
listens on a kind's signal, the hooks write that kind's lines without building an event
(:attr:`Dispatcher.quiet`, ``_State.write_direct``).

A sink that logs while an event is being dispatched (Socket.IO or Redis clients do) would re-enter
dispatch. Such nested events go to the primary sinks only (the files), so fan-out cannot recurse.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .context import Trace

__all__ = ["DIRECT_SINKS", "EVENT_KINDS", "Dispatcher", "Event"]

#: Every value of the ``event`` key.
EVENT_KINDS = (
    "request_start",
    "stage",
    "request_end",
    "request_error",
    "log",
    "job_start",
    "job_end",
    "job_rejected",
    "hang",
)

_pid = os.getpid()
_time = time.time
_current_thread = threading.current_thread


def _refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_refresh_pid)

Sink = Callable[["Event"], None]

#: The sinks whose work the hooks can do without building an event: the files (the same
#: ``plain_line``), the in-flight registry (``add``/``discard``) and the signals (nothing to do
#: while no receiver is connected). See :attr:`Dispatcher.quiet`.
DIRECT_SINKS = frozenset({"files", "inflight", "signals"})


class Event:
    """One diagnostic record. Files, signals, the live stream and tests all receive this object.

    ``fields`` holds the kind-specific keys (``method``, ``path``, ``status``, ``duration_ms``,
    ``stage``, ``stages``, ``ok``, ``error`` ...). ``to_dict()`` gives the JSON-lines form.
    """

    __slots__ = (
        "exc",
        "fields",
        "job_id",
        "kind",
        "level",
        "logger",
        "msg",
        "pid",
        "request_id",
        "target",
        "thread",
        "trace",
        "ts",
    )

    def __init__(
        self,
        kind: str,
        level: int,
        logger: str,
        msg: str,
        request_id: str | None,
        job_id: str | None,
        fields: dict[str, Any],
        *,
        target: str = "requests",
        exc: str | None = None,
        trace: Trace | None = None,
        ts: float | None = None,
    ) -> None:
        self.kind = kind
        self.ts = _time() if ts is None else ts
        self.level = level
        self.logger = logger
        self.msg = msg
        self.request_id = request_id
        self.job_id = job_id
        self.fields = fields
        self.target = target  # "requests" or "jobs": which file the line goes to
        self.exc = exc
        self.trace = trace
        self.pid = _pid
        self.thread = _current_thread().name

    @property
    def level_name(self) -> str:
        return logging.getLevelName(self.level)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-lines form: documented keys, keys without a value left out. ``ts`` is epoch."""
        d: dict[str, Any] = {
            "ts": self.ts,
            "level": logging.getLevelName(self.level),
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
                d[k] = v
        d["pid"] = self.pid
        d["thread"] = self.thread
        if self.exc:
            d["exc"] = self.exc
        return d

    def __repr__(self) -> str:
        return (
            f"<Event {self.kind} {logging.getLevelName(self.level)} req={self.request_id} "
            f"job={self.job_id} {self.msg!r}>"
        )


class _Flag(threading.local):
    active = False


class Dispatcher:
    """Hands each event to the sinks in order; isolates and counts sink failures."""

    def __init__(self) -> None:
        self.primary: list[Sink] = []  # the files: always run, also for nested events
        self.fanout: list[Sink] = []  # signals, registry, live bridge, console
        self.failures: dict[str, int] = {}
        self._reported: set[str] = set()
        self._flag = _Flag()
        self._lock = threading.Lock()
        #: Called once per failing sink with (sink name, exception); set by the extension so the
        #: failure also reaches errors.log.
        self.on_first_failure: Callable[[str, BaseException], None] | None = None
        #: True while every sink is one of :data:`DIRECT_SINKS`: then an event nobody listens to
        #: on its signal needs no :class:`Event` object, and the request hooks write its line
        #: directly (the console, the live bridge or any other sink turns this off).
        self.quiet = False  # until the files and the registry are added

    def add(self, sink: Sink, *, primary: bool = False) -> None:
        (self.primary if primary else self.fanout).append(sink)
        self._update()

    def remove(self, sink: Sink) -> None:
        for lst in (self.primary, self.fanout):
            if sink in lst:
                lst.remove(sink)
        self._update()

    def _update(self) -> None:
        names = [getattr(s, "sink_name", None) for s in (*self.primary, *self.fanout)]
        # Only while the files and the registry are there: the direct path stands in for them.
        self.quiet = (
            all(n in DIRECT_SINKS for n in names) and "files" in names and "inflight" in names
        )

    def __call__(self, event: Event) -> None:
        for sink in self.primary:
            try:
                sink(event)
            except Exception as exc:
                self.failed(sink, exc)
        flag = self._flag
        if flag.active:
            return
        flag.active = True
        try:
            for sink in self.fanout:
                try:
                    sink(event)
                except Exception as exc:
                    self.failed(sink, exc)
        finally:
            flag.active = False

    def failed(self, sink: object, exc: BaseException) -> None:
        """Count a sink failure; report the first one of each sink on stderr and via the hook."""
        name = str(getattr(sink, "sink_name", None) or getattr(sink, "__qualname__", repr(sink)))
        with self._lock:
            self.failures[name] = self.failures.get(name, 0) + 1
            first = name not in self._reported
            self._reported.add(name)
        if not first:
            return
        with contextlib.suppress(Exception):  # stderr itself may be gone
            sys.stderr.write(
                f"flask-diaglog: sink {name} failed and is skipped for this event "
                f"({type(exc).__name__}: {exc}); further failures are counted, not printed\n"
            )
        hook = self.on_first_failure
        if hook is not None:
            with contextlib.suppress(Exception):  # the hook must never raise into a request
                hook(name, exc)
