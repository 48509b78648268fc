"""In-flight registry (and, later, the hang watchdog)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .context import Trace
from .events import Event

if TYPE_CHECKING:
    from .extension import _State

__all__ = ["InFlight", "setup"]


class InFlight:
    """Every in-flight request and background job of this process, keyed by trace."""

    sink_name = "inflight"

    def __init__(self, maxsize: int = 10_000) -> None:
        self.maxsize = maxsize
        self.overflow = 0
        self._items: dict[int, Trace] = {}

    def __call__(self, ev: Event) -> None:
        kind = ev.kind
        trace = ev.trace
        if trace is None:
            return
        if kind == "request_start" or kind == "job_start":
            if len(self._items) < self.maxsize:
                self._items[id(trace)] = trace
            else:
                self.overflow += 1
        elif kind == "request_end" or kind == "job_end":
            self._items.pop(id(trace), None)

    def traces(self) -> list[Trace]:
        return list(self._items.values())

    def __len__(self) -> int:
        return len(self._items)


def setup(state: _State) -> None:
    registry = InFlight()
    state.extras["inflight"] = registry
    state.dispatch.add(registry)


def snapshot(state: Any) -> list[dict[str, Any]]:
    registry: InFlight = state.extras["inflight"]
    return [
        {
            "kind": t.kind,
            "request_id": t.request_id,
            "job_id": t.job_id,
            "method": t.method,
            "path": t.path,
            "start": t.start,
            "elapsed_ms": round(t.elapsed_ms(), 3),
            "stage": t.current_stage,
            "thread": t.thread,
        }
        for t in registry.traces()
    ]
