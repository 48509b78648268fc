"""What each dashboard page shows, computed from the index: plain dicts and lists, the same for
the HTML pages and the JSON API.

* :func:`select`: the requests and jobs a :class:`~.filters.Filters` admits, newest first;
* :func:`overview`: the last hour per minute (requests, error rate, p50/p95/p99) and the
  slowest routes;
* :func:`route_stats`: one route's latency histogram, percentiles over time, status mix and
  average stage breakdown;
* :func:`detail`: one request or job id with its lines, its stages as a nested waterfall,
  tracebacks, hang reports, progress and the jobs it started; bounded, since any client may
  put any id on any number of requests (:data:`MAX_SECTIONS`, :data:`MAX_LINES`).
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from ..logread import LogRecord
from ..trail import LEVELS
from .filters import Filters, parse_time
from .index import Index, Item

__all__ = ["detail", "overview", "percentiles", "route_stats", "select"]

#: Upper bounds (ms) of the latency histogram's bins; the last bin is open.
HIST_EDGES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000)
_QS = (0.5, 0.95, 0.99)
#: Requests and job runs one trace answer shows at most (any client may put any id on its
#: requests, so one id may name thousands); the answer counts the others in ``more``.
MAX_SECTIONS = 20
#: Lines one section of a trace answer shows at most: its first :data:`HEAD_LINES` and its last
#: ones; the section counts those between them in ``more_lines``.
MAX_LINES = 300
HEAD_LINES = 200


def percentiles(values: Sequence[float], qs: Sequence[float] = _QS) -> list[float]:
    """Nearest-rank percentiles of ``values`` (one sort for all of ``qs``); zeros when empty."""
    if not values:
        return [0.0 for _ in qs]
    s = sorted(values)
    n = len(s)
    return [round(s[min(n - 1, max(0, math.ceil(q * n) - 1))], 2) for q in qs]


def _sorted(index: Index) -> list[Item]:
    return sorted(index.items, key=lambda i: (i.ts, i.seq), reverse=True)


def _haystack(item: Item) -> str:
    parts = [
        item.method, item.path, item.status, item.request_id, item.job_id, item.name,
        item.error, item.rejected, *(item.stages or ()), *(item.notes or ()),
    ]  # fmt: skip
    return " ".join(str(p) for p in parts if p is not None).lower()


def _admits(f: Filters, since: float | None, until: float | None) -> Any:
    status_class = f.status[0] if f.status and f.status.endswith("xx") else None
    status_code = int(f.status) if f.status and status_class is None else None
    level = LEVELS[f.level] if f.level else 0
    q = f.q.lower() if f.q else None

    def admit(i: Item) -> bool:
        if f.kind and i.kind != f.kind:
            return False
        if since is not None and i.ts < since:
            return False
        if until is not None and i.ts > until:
            return False
        if status_class and (i.status is None or str(i.status)[0] != status_class):
            return False
        if status_code is not None and i.status != status_code:
            return False
        if f.method and i.method != f.method:
            return False
        if f.route and i.route != f.route and (i.route or "").partition(" ")[2] != f.route:
            return False
        if f.min_ms is not None and (i.duration_ms or 0.0) < f.min_ms:
            return False
        if level and i.level < level:
            return False
        if f.job_id and i.job_id != f.job_id:
            return False
        if f.request_id and i.request_id != f.request_id:
            return False
        return not (q and q not in _haystack(i))

    return admit


def select(index: Index, f: Filters, now: float | None = None) -> tuple[list[Item], int]:
    """The page of items ``f`` admits, newest first, and how many it admits in all."""
    since = parse_time(f.since, "since", now) if f.since else None
    until = parse_time(f.until, "until", now) if f.until else None
    admit = _admits(f, since, until)
    with index.lock:
        rows = [i for i in _sorted(index) if admit(i)]
    start = (f.page - 1) * f.per_page
    return rows[start : start + f.per_page], len(rows)


def _requests_between(index: Index, since: float, until: float) -> list[Item]:
    with index.lock:
        return [i for i in index.items if i.kind == "request" and since <= i.ts < until and i.end]


def overview(index: Index, now: float | None = None, minutes: int = 60) -> dict[str, Any]:
    """The last ``minutes`` per minute, the totals, the slowest routes and the newest items."""
    now = time.time() if now is None else now
    first = (int(now) // 60 - minutes + 1) * 60
    items = _requests_between(index, first, now + 60)
    counts = [0] * minutes
    errors = [0] * minutes
    durations: list[list[float]] = [[] for _ in range(minutes)]
    routes: dict[str, list[Item]] = {}
    for i in items:
        b = min(minutes - 1, int(i.ts - first) // 60)
        counts[b] += 1
        if i.failed:
            errors[b] += 1
        if i.duration_ms is not None:
            durations[b].append(i.duration_ms)
        if i.route:
            routes.setdefault(i.route, []).append(i)
    per_minute = [percentiles(d) if d else [None, None, None] for d in durations]
    all_ms = [i.duration_ms for i in items if i.duration_ms is not None]
    total = len(items)
    failed = sum(errors)
    with index.lock:
        recent = [i.to_dict() for i in _sorted(index)[:20]]
    return {
        "since": first,
        "minutes": [first + 60 * k for k in range(minutes)],
        "requests_per_minute": counts,
        "error_rate": [
            round(100 * e / c, 2) if c else None for e, c in zip(errors, counts, strict=True)
        ],
        "p50_ms": [p[0] for p in per_minute],
        "p95_ms": [p[1] for p in per_minute],
        "p99_ms": [p[2] for p in per_minute],
        "totals": {
            "requests": total,
            "errors": failed,
            "error_rate": round(100 * failed / total, 2) if total else 0.0,
            **dict(zip(("p50_ms", "p95_ms", "p99_ms"), percentiles(all_ms), strict=True)),
        },
        "slowest_routes": _route_rows(routes)[:10],
        "recent": recent,
    }


def _route_rows(routes: dict[str, list[Item]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for route, items in routes.items():
        ms = [i.duration_ms for i in items if i.duration_ms is not None]
        p50, p95, p99 = percentiles(ms)
        method, _, path = route.partition(" ")
        rows.append(
            {
                "route": route, "method": method, "path": path, "count": len(items),
                "errors": sum(1 for i in items if i.failed), "p50_ms": p50, "p95_ms": p95,
                "p99_ms": p99, "max_ms": round(max(ms), 2) if ms else 0.0,
            }
        )  # fmt: skip
    rows.sort(key=lambda r: -float(r["p95_ms"]))
    return rows


def _short(ms: int) -> str:
    return f"{ms // 1000}k" if ms >= 1000 else str(ms)


def route_stats(
    index: Index,
    route: str,
    since: float | None = None,
    until: float | None = None,
    buckets: int = 30,
) -> dict[str, Any]:
    """One route (``METHOD /path/<id>``): histogram, percentiles over time, status mix, stages."""
    with index.lock:
        items = [
            i
            for i in index.items
            if i.route == route
            and i.end
            and (since is None or i.ts >= since)
            and (until is None or i.ts <= until)
        ]
    ms = [i.duration_ms for i in items if i.duration_ms is not None]
    hist = [0] * (len(HIST_EDGES) + 1)
    for v in ms:
        b = 0
        while b < len(HIST_EDGES) and v > HIST_EDGES[b]:
            b += 1
        hist[b] += 1
    labels = [_short(e) for e in HIST_EDGES] + [f">{_short(HIST_EDGES[-1])}"]
    over_time: list[dict[str, Any]] = []
    if items:
        lo = min(i.ts for i in items)
        hi = max(i.ts for i in items)
        buckets = max(1, min(buckets, int(hi - lo) + 1))
        width = max((hi - lo) / buckets, 1.0)
        groups: list[list[float]] = [[] for _ in range(buckets)]
        for i in items:
            if i.duration_ms is not None:
                groups[min(buckets - 1, int((i.ts - lo) / width))].append(i.duration_ms)
        for k, g in enumerate(groups):
            p = percentiles(g) if g else [None, None, None]
            over_time.append(
                {"ts": lo + k * width, "count": len(g), "p50_ms": p[0], "p95_ms": p[1],
                 "p99_ms": p[2]}
            )  # fmt: skip
    stages: dict[str, float] = {}
    for i in items:
        for name, v in (i.stages or {}).items():
            stages[name] = stages.get(name, 0.0) + float(v)
    n = len(items)
    p50, p95, p99 = percentiles(ms)
    return {
        "route": route,
        "count": n,
        "errors": sum(1 for i in items if i.failed),
        "p50_ms": p50,
        "p95_ms": p95,
        "p99_ms": p99,
        "histogram": [{"le": lab, "count": c} for lab, c in zip(labels, hist, strict=True)],
        "over_time": over_time,
        "status_mix": dict(
            sorted(Counter(str(i.status) if i.status else "none" for i in items).items())
        ),
        "stages_avg_ms": {k: round(v / n, 3) for k, v in sorted(stages.items())} if n else {},
    }


# -- one request or job ---------------------------------------------------------------------

_EXC_STARTS = (" | Traceback (most recent call last):", " | Stack of thread ")


def split_exc(rec: LogRecord) -> tuple[str, str | None]:
    """The message of a record and its traceback or stack, if any (JSON: ``exc``; plain: after
    ``" | "``, with its escaped line breaks unfolded)."""
    msg = str(rec.data.get("msg", ""))
    exc = rec.data.get("exc")
    if exc:
        return msg, str(exc)
    for start in _EXC_STARTS:
        at = msg.find(start)
        if at >= 0:
            return msg[:at], msg[at + 3 :].replace("\\n", "\n")
    return msg, None


def waterfall(item: Item, lines: Iterable[LogRecord]) -> list[dict[str, Any]]:
    """One bar per stage line of ``item``: name, offset and duration (ms), depth, ok."""
    bars: list[dict[str, Any]] = []
    for rec in lines:
        if rec.event != "stage":
            continue
        ms = float(rec.data.get("duration_ms") or 0.0)
        start = (rec.ts - item.ts) * 1000.0 - ms
        bars.append(
            {"stage": str(rec.data.get("stage")), "offset_ms": round(max(0.0, start), 3),
             "duration_ms": ms, "ok": rec.data.get("ok") is not False,
             "error": rec.data.get("error")}
        )  # fmt: skip
    bars.sort(key=lambda b: (b["offset_ms"], -b["duration_ms"]))
    open_ends: list[float] = []
    for b in bars:
        end = b["offset_ms"] + b["duration_ms"]
        while open_ends and open_ends[-1] < end - 1.0:  # ms timestamps: 1 ms of slack
            open_ends.pop()
        b["depth"] = len(open_ends)
        open_ends.append(end)
    return bars


def _line(rec: LogRecord) -> dict[str, Any]:
    msg, exc = split_exc(rec)
    d = rec.data
    return {
        "ts": rec.ts, "level": d.get("level"), "event": rec.event, "logger": d.get("logger"),
        "msg": msg, "exc": exc, "file": rec.file,
    }  # fmt: skip


def _cut(own: list[LogRecord]) -> tuple[list[LogRecord], int]:
    """At most :data:`MAX_LINES` of one section's lines (its first :data:`HEAD_LINES` and its
    last ones), and how many between them are left out."""
    more = len(own) - MAX_LINES
    if more <= 0:
        return own, 0
    return own[:HEAD_LINES] + own[len(own) - (MAX_LINES - HEAD_LINES) :], more


def _chosen(items: list[Item]) -> list[Item]:
    """The :data:`MAX_SECTIONS` of ``items`` a trace answer shows: the job runs first, then the
    requests that started one of them, then the other requests; newest first within each."""
    if len(items) <= MAX_SECTIONS:
        return items
    starters = {i.request_id for i in items if i.kind == "job" and i.request_id}

    def rank(i: Item) -> tuple[int, float, int]:
        first = 0 if i.kind == "job" else 1 if i.request_id in starters else 2
        return first, -i.ts, -i.seq

    return sorted(items, key=rank)[:MAX_SECTIONS]


def _own_lines(items: list[Item], lines: list[LogRecord]) -> list[list[LogRecord]]:
    """Each item's lines, in time order, in one pass over ``lines`` (sorted by time): a line is
    an item's when it is in the item's file, names its request id (or, for a job run without
    one, its job id), and was written between its start and its end (2 ms of slack)."""
    by_request: dict[tuple[str, str | None], list[LogRecord]] = {}
    by_job: dict[tuple[str, str | None], list[LogRecord]] = {}
    for r in lines:
        by_request.setdefault((r.file, r.request_id), []).append(r)
        by_job.setdefault((r.file, r.job_id), []).append(r)
    out: list[list[LogRecord]] = []
    for item in items:
        file = "requests" if item.kind == "request" else "jobs"
        if item.request_id is not None:
            group = by_request.get((file, item.request_id), [])
        else:
            group = by_job.get((file, item.job_id), [])
        end = item.end if item.end is not None else math.inf
        lo = bisect_left(group, item.ts - 0.002, key=_ts)
        hi = bisect_right(group, end + 0.002, key=_ts)
        out.append(group[lo:hi])
    return out


def _ts(rec: LogRecord) -> float:
    return rec.ts


def _section(item: Item, own: list[LogRecord]) -> dict[str, Any]:
    shown, more = _cut(own)
    section: dict[str, Any] = {
        "item": item.to_dict(),
        "waterfall": waterfall(item, shown),
        "lines": [_line(r) for r in shown],
        "more_lines": more,
        "tracebacks": [e for r in shown if r.event != "hang" for e in [split_exc(r)[1]] if e],
        "hangs": [
            {"ts": r.ts, "msg": split_exc(r)[0], "stack": split_exc(r)[1]}
            for r in shown
            if r.event == "hang"
        ],
        "progress": [
            {"ts": r.ts, "fraction": r.data.get("fraction"), "message": r.data.get("message")}
            for r in shown
            if r.event == "progress"
        ],
    }
    if more:
        section["more_lines_at"] = HEAD_LINES
    return section


def detail(index: Index, trace_id: str) -> dict[str, Any] | None:
    """Everything about one request id or job id, or ``None`` when no line names it: at most
    :data:`MAX_SECTIONS` requests and job runs (``more`` counts the others), each with at most
    :data:`MAX_LINES` lines (``more_lines``). The work grows with the lines of the runs shown,
    never with their product, whatever number of requests carry the id."""
    with index.lock:
        found = [*index.by_request.get(trace_id, ()), *index.by_job.get(trace_id, ())]
        # a job id's requests bring the jobs they started
        for rid in {i.request_id for i in found if i.request_id}:
            found.extend(index.by_request.get(rid, ()))
    items = list({id(i): i for i in found}.values())
    if not items:
        return None
    shown = _chosen(items)
    shown.sort(key=lambda i: (i.kind != "request", i.ts, i.seq))
    traces = sorted({i.request_id or f"job:{i.job_id}" for i in shown})
    lines = index.trace_lines(traces)
    sections = [_section(i, own) for i, own in zip(shown, _own_lines(shown, lines), strict=True)]
    return {"id": trace_id, "sections": sections, "more": len(items) - len(shown)}
