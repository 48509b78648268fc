"""Test helpers: capture the events an app dispatches and assert what was logged and timed.

::

    from flask_diaglog.testing import capture_events

    with capture_events() as events:
        client.post("/api/generate", json={"job_id": "j1"})
    assert events.for_job("j1").stage_names() == ["validate", "render"]
    assert events.logged("rendered 3 pages")

The pytest plugin's ``diaglog_events`` fixture is one such capture around each test.

Capturing listens on the :mod:`~flask_diaglog.signals`, so the records are the very
:class:`~flask_diaglog.Event` objects the log files get. It works in test mode (signals are
never switched off) and captures from every app unless one is given.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, overload

from .record import Event
from .signals import SIGNALS

__all__ = ["CapturedEvents", "EventCapture", "capture_events"]


def _level(level: int | str) -> int:
    if isinstance(level, int):
        return level
    value = logging.getLevelName(level.upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown level {level!r}")
    return value


class CapturedEvents(Sequence[Event]):
    """A list of events with filters (each returns a new ``CapturedEvents``) and assertions.

    Indexing, ``len()``, iteration and ``==`` with a list work as for a list.
    """

    def __init__(self, events: Iterable[Event] = ()) -> None:
        self._events: list[Event] = list(events)

    # -- sequence ---------------------------------------------------------------------------

    def _snapshot(self) -> list[Event]:
        return list(self._events)

    @overload
    def __getitem__(self, index: int) -> Event: ...

    @overload
    def __getitem__(self, index: slice) -> CapturedEvents: ...

    def __getitem__(self, index: int | slice) -> Event | CapturedEvents:
        if isinstance(index, slice):
            return CapturedEvents(self._snapshot()[index])
        return self._snapshot()[index]

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self._snapshot())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CapturedEvents):
            return self._snapshot() == other._snapshot()
        if isinstance(other, list):
            return self._snapshot() == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {len(self)} events: {' '.join(self.kinds)}>"

    # -- filters ----------------------------------------------------------------------------

    def filter(
        self,
        kind: str | Iterable[str] | None = None,
        *,
        job_id: str | None = None,
        request_id: str | None = None,
        level: int | str | None = None,
        logger: str | None = None,
        where: Callable[[Event], bool] | None = None,
    ) -> CapturedEvents:
        """Events matching every given criterion.

        :param kind: one kind (``"stage"``) or several.
        :param level: the minimum level (``"WARNING"`` or ``logging.WARNING``).
        :param logger: a logger name; its child loggers match too.
        :param where: any predicate on the event.
        """
        kinds = {kind} if isinstance(kind, str) else set(kind) if kind is not None else None
        min_level = _level(level) if level is not None else None
        out = []
        for ev in self._snapshot():
            if kinds is not None and ev.kind not in kinds:
                continue
            if job_id is not None and ev.job_id != job_id:
                continue
            if request_id is not None and ev.request_id != request_id:
                continue
            if min_level is not None and ev.level < min_level:
                continue
            if logger is not None and not (
                ev.logger == logger or ev.logger.startswith(logger + ".")
            ):
                continue
            if where is not None and not where(ev):
                continue
            out.append(ev)
        return CapturedEvents(out)

    def of(self, *kinds: str) -> CapturedEvents:
        """Events of these kinds: ``events.of("request_end")``."""
        return self.filter(kinds)

    def for_job(self, job_id: str) -> CapturedEvents:
        """Events of one job: its requests, its background work and the lines they logged."""
        return self.filter(job_id=job_id)

    def for_request(self, request_id: str) -> CapturedEvents:
        """Events of one request (and of background work it started)."""
        return self.filter(request_id=request_id)

    def logs(self, level: int | str | None = None) -> CapturedEvents:
        """The app's own log records (``event == "log"``), optionally at or above ``level``."""
        return self.filter("log", level=level)

    # -- views ------------------------------------------------------------------------------

    @property
    def kinds(self) -> list[str]:
        """The kind of each event, in order."""
        return [ev.kind for ev in self._snapshot()]

    @property
    def request_ids(self) -> list[str]:
        """The distinct request ids, in order of first appearance."""
        return list(dict.fromkeys(ev.request_id for ev in self._snapshot() if ev.request_id))

    @property
    def job_ids(self) -> list[str]:
        """The distinct job ids, in order of first appearance."""
        return list(dict.fromkeys(ev.job_id for ev in self._snapshot() if ev.job_id))

    def messages(self, level: int | str | None = None) -> list[str]:
        """The messages of the app's log records, optionally at or above ``level``."""
        return [ev.msg for ev in self.logs(level)]

    def logged(self, text: str, level: int | str | None = None) -> bool:
        """True when a log record at or above ``level`` contains ``text``."""
        return any(text in msg for msg in self.messages(level))

    def stage_names(self) -> list[str]:
        """The names of the finished stages, in the order they finished."""
        return [str(ev.fields.get("stage")) for ev in self.of("stage")]

    def stages(self) -> dict[str, float]:
        """Stage name to total milliseconds (a stage run twice is summed)."""
        out: dict[str, float] = {}
        for ev in self.of("stage"):
            name = str(ev.fields.get("stage"))
            out[name] = out.get(name, 0.0) + float(ev.fields.get("duration_ms") or 0.0)
        return out

    def failed_stages(self) -> list[str]:
        """The names of the stages that raised."""
        return [
            str(ev.fields.get("stage")) for ev in self.of("stage") if ev.fields.get("ok") is False
        ]

    def dicts(self) -> list[dict[str, Any]]:
        """Each event in its JSON-lines form (``Event.to_dict()``)."""
        return [ev.to_dict() for ev in self._snapshot()]

    def render(self) -> str:
        """The events as plain log lines, one per line (what the files would show)."""
        from .files.render import plain_line, render_event

        return "".join(render_event(plain_line, ev).decode("utf-8") for ev in self._snapshot())

    # -- assertions -------------------------------------------------------------------------

    def one(self, kind: str | None = None, **criteria: Any) -> Event:
        """The single event matching (see :meth:`filter`); ``AssertionError`` otherwise."""
        found = self.filter(kind, **criteria)
        if len(found) != 1:
            raise AssertionError(
                f"expected exactly one {kind or 'event'} matching {criteria or '{}'}, "
                f"found {len(found)}:\n{self.render()}"
            )
        return found[0]


class EventCapture(CapturedEvents):
    """The live list a capture appends to (thread-safe), with :meth:`wait_for` for background
    work and :meth:`clear`."""

    def __init__(self) -> None:
        super().__init__()
        self._cond = threading.Condition()

    def _snapshot(self) -> list[Event]:
        with self._cond:
            return list(self._events)

    def append(self, event: Event) -> None:
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()

    def clear(self) -> None:
        """Forget everything captured so far."""
        with self._cond:
            self._events.clear()

    def wait_for(
        self,
        kind: str | Iterable[str] | None = None,
        *,
        timeout: float = 5.0,
        **criteria: Any,
    ) -> Event:
        """Wait (at most ``timeout`` seconds) for an event matching :meth:`filter`'s criteria,
        e.g. ``events.wait_for("job_end", job_id="j1")``, and return the first one.

        Raises ``AssertionError`` listing what was captured when none arrives in time.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = CapturedEvents(self._events).filter(kind, **criteria)
                if found:
                    return found[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        raise AssertionError(
            f"no {kind or 'event'} matching {criteria or '{}'} within {timeout}s; captured:\n"
            f"{self.render()}"
        )


@contextlib.contextmanager
def capture_events(app: Any = None) -> Iterator[EventCapture]:
    """Capture every event dispatched while the block runs (from ``app`` only, if given).

    Background work that finishes after the block is not captured: wait for it inside, with
    ``events.wait_for("job_end", job_id=...)``.
    """
    capture = EventCapture()

    def receiver(sender: Any, event: Event, **_: Any) -> None:
        capture.append(event)

    with contextlib.ExitStack() as stack:
        for sig in dict.fromkeys(SIGNALS.values()):
            if app is None:
                stack.enter_context(sig.connected_to(receiver))
            else:
                stack.enter_context(sig.connected_to(receiver, sender=app))
        yield capture
