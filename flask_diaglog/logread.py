"""Reading diaglog files back: both line formats, rotated and gzipped backups, in order.

Shared by the ``flask diaglog`` CLI and anything else that reads the trail (a dashboard, a test).
"""

from __future__ import annotations

import glob
import gzip
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .files.render import split_json, split_plain
from .trail import FILES, kind_of, parse_message

__all__ = [
    "FILES",
    "LogRecord",
    "iter_files",
    "parse_line",
    "read_records",
    "route_of",
    "summarize",
    "tail_records",
]


@dataclass
class LogRecord:
    """One parsed line. ``data`` has the JSON keys (for plain lines, the recoverable ones)."""

    ts: float
    file: str
    raw: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def event(self) -> str:
        return str(self.data.get("event", "log"))

    @property
    def request_id(self) -> str | None:
        return self.data.get("request_id")

    @property
    def job_id(self) -> str | None:
        return self.data.get("job_id")


def _ts(text: str) -> float:
    try:
        if "T" in text:
            return datetime.fromisoformat(text).timestamp()
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").timestamp()
    except ValueError:
        return 0.0


def parse_line(line: str, file: str = "") -> LogRecord | None:
    """Parse one line of either layout; ``None`` for a line that is neither.

    The layout is split by :mod:`~flask_diaglog.files.render`, a plain message is read back by
    the patterns of :mod:`~flask_diaglog.trail`, so reading can never drift from writing.
    """
    line = line.rstrip("\n")
    if not line:
        return None
    if line.startswith("{"):
        obj = split_json(line)
        return LogRecord(_ts(str(obj.get("ts", ""))), file, line, obj) if obj is not None else None
    parts = split_plain(line)
    if parts is None:
        return None
    msg = parts["msg"]
    data: dict[str, Any] = {"level": parts["level"], "logger": parts["logger"], "msg": msg}
    if parts["req"] != "-":
        data["request_id"] = parts["req"]
    if parts["job"] != "-":
        data["job_id"] = parts["job"]
    kind = kind_of(parts["logger"], msg)
    data["event"] = kind
    data.update(parse_message(kind, msg))
    return LogRecord(_ts(parts["ts"]), file, line, data)


def iter_files(log_dir: str, names: Iterable[str] = FILES) -> Iterator[tuple[str, str]]:
    """``(name, path)`` for each file and its backups, oldest backup first, current file last."""
    for name in names:
        base = os.path.join(log_dir, f"{name}.log")
        backups = []
        for path in glob.glob(glob.escape(base) + ".*"):
            suffix = path[len(base) + 1 :].removesuffix(".gz")
            if suffix.isdigit():
                backups.append((int(suffix), path))
        for _, path in sorted(backups, reverse=True):
            yield name, path
        if os.path.exists(base):
            yield name, base


def _lines(path: str) -> Iterator[str]:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace", newline="\n") as fh:
            yield from fh
    except (OSError, EOFError):
        return  # a file rotated or compressed while being read


def read_records(log_dir: str, names: Iterable[str] = FILES) -> Iterator[LogRecord]:
    """Every parsable record of the given files, file by file, oldest first within a file."""
    for name, path in iter_files(log_dir, names):
        for line in _lines(path):
            rec = parse_line(line, name)
            if rec is not None:
                yield rec


def tail_records(log_dir: str, name: str, max_bytes: int = 256 * 1024) -> list[LogRecord]:
    """The records in the last ``max_bytes`` of the current ``<name>.log`` (cheap on big files)."""
    path = os.path.join(log_dir, f"{name}.log")
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            fh.seek(start)
            chunk = fh.read()
    except OSError:
        return []
    if start:
        chunk = chunk[chunk.find(b"\n") + 1 :]  # drop the partial first line
    out = []
    for line in chunk.decode("utf-8", "replace").split("\n"):
        rec = parse_line(line, name)
        if rec is not None:
            out.append(rec)
    return out


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


_ID_SEGMENT = re.compile(
    r"^(?:\d+|[0-9a-fA-F]{8,}|[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12})$"
)


def route_of(path: str, job_id: str | None = None) -> str:
    """A path with its ids folded: the job id becomes ``<job_id>``, numbers and hex ids ``<id>``,
    so ``/api/jobs/4c1f9e0b2a7d4e55/generate`` is counted as ``/api/jobs/<job_id>/generate``."""
    parts = path.split("/")
    for i, seg in enumerate(parts):
        if job_id is not None and seg == job_id:
            parts[i] = "<job_id>"
        elif _ID_SEGMENT.match(seg):
            parts[i] = "<id>"
    return "/".join(parts)


def summarize(records: Iterable[LogRecord], since: float = 0.0) -> dict[str, Any]:
    """Per route (method + path with ids folded, see :func:`route_of`): count, 5xx, p50/p95/max
    ms; per stage: count, total, p95."""
    routes: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    stages: dict[str, list[float]] = {}
    failed_jobs = 0
    for rec in records:
        if rec.ts < since:
            continue
        d = rec.data
        if rec.event == "request_end" and rec.file == "requests":
            key = f"{d.get('method')} {route_of(str(d.get('path')), rec.job_id)}"
            routes.setdefault(key, []).append(float(d.get("duration_ms", 0.0)))
            if int(d.get("status") or 0) >= 500:
                errors[key] = errors.get(key, 0) + 1
        elif rec.event == "stage" and rec.file in ("requests", "jobs"):
            stages.setdefault(str(d.get("stage")), []).append(float(d.get("duration_ms", 0.0)))
        elif rec.event == "job_end" and rec.file == "jobs" and d.get("ok") is False:
            failed_jobs += 1
    return {
        "routes": {
            k: {
                "count": len(v),
                "errors": errors.get(k, 0),
                "p50_ms": round(_pct(v, 0.5), 2),
                "p95_ms": round(_pct(v, 0.95), 2),
                "max_ms": round(max(v), 2),
            }
            for k, v in sorted(routes.items(), key=lambda kv: -sum(kv[1]))
        },
        "stages": {
            k: {"count": len(v), "total_ms": round(sum(v), 2), "p95_ms": round(_pct(v, 0.95), 2)}
            for k, v in sorted(stages.items(), key=lambda kv: -sum(kv[1]))
        },
        "failed_jobs": failed_jobs,
    }
