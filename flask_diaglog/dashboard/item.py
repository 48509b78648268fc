"""One request, or one run of a background job, as the dashboard's index folds it from the
log files: :class:`Item`, whether it failed, and its JSON form."""

from __future__ import annotations

import sys
from typing import Any

from ..logread import NO_ROUTE, route_of
from ..trail import level_name

__all__ = ["Item", "interned"]


def interned(value: Any) -> Any:
    """One copy of a string many items share (methods, routes, stage and job names, hosts)."""
    return sys.intern(value) if type(value) is str else value


class Item:
    """One request, or one run of a background job, as the log files tell it."""

    __slots__ = (
        "aborted",
        "duration_ms",
        "end",
        "error",
        "host",
        "hung",
        "job_id",
        "kind",
        "level",
        "method",
        "name",
        "notes",
        "opened",
        "outcome",
        "path",
        "pid",
        "progress",
        "rejected",
        "request_id",
        "route",
        "seq",
        "slow",
        "stages",
        "status",
        "ts",
    )

    def __init__(self, kind: str, seq: int, request_id: str | None, job_id: str | None) -> None:
        self.kind = kind
        self.seq = seq
        self.request_id = request_id
        self.job_id = job_id
        self.name: str | None = None
        self.method: str | None = None
        self.path: str | None = None
        self.route: str | None = None
        self.status: int | None = None
        self.duration_ms: float | None = None
        self.ts: float = 0.0
        self.end: float | None = None
        self.error: str | None = None
        self.level = 0
        #: A job run's end: ``ok``, ``failed`` or ``retried`` (see
        #: :func:`~flask_diaglog.logread.job_outcome`); ``None`` without an end line.
        self.outcome: str | None = None
        self.stages: dict[str, float] | None = None
        self.hung = 0
        self.aborted = False
        self.slow = False
        self.rejected: str | None = None
        self.progress: dict[str, Any] | None = None
        self.pid: int | None = None
        self.host: str | None = None
        self.notes: list[str] | None = None
        #: Whether its start line was read.
        self.opened = False

    @property
    def trace_id(self) -> str | None:
        """The id the detail page of this item is found under."""
        return self.request_id or self.job_id

    def where(self, d: dict[str, Any]) -> None:
        """Method, path and route from a request's line ``d``: the URL rule the end line names,
        one row for every path that matched no rule (a 404), else the path with its ids folded
        (older lines)."""
        if self.path is None and isinstance(d.get("path"), str):
            self.method = interned(str(d.get("method")))
            self.path = d["path"]
        if isinstance(d.get("route"), str):
            self.route = interned(f"{self.method} {d['route']}")
        elif d.get("status") == 404:
            self.route = NO_ROUTE
        elif self.path is not None:  # no rule word: the rule is the path (or an older line)
            self.route = interned(f"{self.method} {route_of(self.path, self.job_id)}")

    @property
    def failed(self) -> bool:
        """A request that raised or answered a 5xx; a job run that failed (an attempt its task
        queue runs again is not a failed job)."""
        if self.kind == "job":
            return self.outcome == "failed"
        return self.error is not None or (self.status or 0) >= 500

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (keys without a value left out). A job run's outcome is ``ok`` (true
        or false, as its end line says) and, for an attempt that is run again, ``retried``."""
        out: dict[str, Any] = {}
        for k in self.__slots__:
            if k in ("seq", "notes", "opened", "outcome"):
                continue
            v = getattr(self, k)
            if v is None or (not v and k in ("aborted", "slow", "hung", "level")):
                continue
            out[k] = level_name(v) if k == "level" else v
        if self.outcome is not None:
            out["ok"] = self.outcome == "ok"
            if self.outcome == "retried":
                out["retried"] = True
        out["kind"] = self.kind
        out["trace_id"] = self.trace_id
        return out
