"""Reading diaglog files back: both line formats, rotated and gzipped backups, several log
directories (one per host) merged by time; and what is built from records: route, stage and job
statistics (:func:`summarize`), the records of one id (:func:`trace_records`) and its timeline
(:func:`spans_of`). Shared by the CLI and the dashboard; the bounded statistics are
:class:`~flask_diaglog.percentiles.Stats`.

Everything streams: memory grows with the number of routes, stages and job names, never with the
number of lines. Lines are split by :mod:`~flask_diaglog.files.render` and messages read by
:mod:`~flask_diaglog.trail`, so reading can never drift from writing.
"""

from __future__ import annotations

import glob
import gzip
import heapq
import os
import re
import stat
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .files.render import plain_line, split_json, split_plain
from .linecheck import line_time, well_formed, without_surrogates
from .percentiles import Stats
from .readfile import NotRegular, Readable, open_regular, read_lines, reason
from .trail import FILES, LEVELS, kind_of, parse_message

__all__ = [
    "FILES", "NO_ROUTE", "LogRecord", "Scan", "Span", "Stats", "files_of", "iter_files",
    "label_dirs", "merge_records", "parse_line", "read_records", "route_of",
    "spans_of", "summarize", "tail_records", "trace_records",
]  # fmt: skip

#: The route of a request that matched no route (a 404): all such paths are one row.
NO_ROUTE = "(no route)"
#: Distinct routes a summary keeps apart; later new ones are counted under ``(other routes)``.
MAX_ROUTES = 500
_STEP = 1 << 20  # a scan reports its progress every MiB read
#: Where the traceback (``exc``) of a plain line starts: a traceback or a hang report's stack.
_EXC_START = re.compile(
    r" \| (?=Traceback \(most recent call last\):|  \+ Exception Group Traceback|Stack of thread )"
)


@dataclass
class LogRecord:
    """One parsed line. ``data`` has the JSON keys (for plain lines, the recoverable ones, with
    the traceback in ``exc``); ``host`` is the line's ``host`` key, else its directory's label."""

    ts: float
    file: str
    raw: str
    data: dict[str, Any] = field(default_factory=dict)
    host: str = ""

    @property
    def event(self) -> str:
        return str(self.data.get("event", "log"))

    @property
    def request_id(self) -> str | None:
        return self.data.get("request_id")

    @property
    def job_id(self) -> str | None:
        return self.data.get("job_id")

    def text(self) -> str:
        """The record in the plain layout: a JSON line goes through the plain renderer."""
        if not self.raw.startswith("{"):
            return self.raw
        d, level = self.data, str(self.data.get("level", "")).removeprefix("Level ")
        no = LEVELS.get(level) or (int(level) if level.isdigit() else 0)
        rid, jid, exc = d.get("request_id"), d.get("job_id"), d.get("exc") or None
        msg, logger = str(d.get("msg", "")), str(d.get("logger", ""))
        line = plain_line(self.ts + 5e-7, no, self.event, logger, rid, jid, msg, None, exc, None)
        return line.decode("utf-8", "replace").rstrip("\n")

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON object: ``ts`` (ISO 8601 with milliseconds and offset), ``host``
        and ``file`` as read, then every other key of the line. The line's own keys of these
        names never replace them: its ``ts`` is the same time, its ``host`` is ``host`` already,
        and a ``file`` key is no writer's (a crafted line could claim another file)."""
        ts = datetime.fromtimestamp(self.ts + 5e-7)  # times are whole ms: no float truncation
        iso = ts.astimezone().isoformat(timespec="milliseconds")
        out = {"ts": iso, "host": self.host, "file": self.file}
        out.update(self.data)
        out.update(ts=iso, host=self.host, file=self.file)
        return out


def parse_line(line: str, file: str = "", host: str = "") -> LogRecord | None:
    """One line of either layout as a record; ``None`` for a line that is neither, or whose
    known fields have the wrong types (see :mod:`~flask_diaglog.linecheck`). A plain line's
    traceback goes to ``exc`` with its line breaks unfolded (its other escapes stay)."""
    line = line.rstrip("\n")
    if not line:
        return None
    try:
        rec = _parse(line, file, host)
    except (ValueError, RecursionError):  # a number that is not one (``1.2.3ms``); deep JSON
        return None
    return rec if rec is not None and well_formed(rec.data) else None


def _parse(line: str, file: str, host: str) -> LogRecord | None:
    # A JSON escape of a lone surrogate (a JSON line, a plain line's bad_job_id) reads back as
    # the text \udXXX: see linecheck.
    escaped = "\\ud" in line or "\\uD" in line
    if line.startswith("{"):
        obj = split_json(line)
        if obj is None:
            return None
        if escaped:
            obj = without_surrogates(obj)
        ts = line_time(str(obj.get("ts", "")))
        return LogRecord(ts, file, line, obj, str(obj.get("host", host)))
    parts = split_plain(line)
    if parts is None:
        return None
    msg = parts["msg"]
    exc = None
    m = _EXC_START.search(msg)
    if m is not None:
        msg, exc = msg[: m.start()], msg[m.end() :].replace("\\n", "\n")
    data: dict[str, Any] = {"level": parts["level"], "logger": parts["logger"], "msg": msg}
    if parts["req"] != "-":
        data["request_id"] = parts["req"]
    if parts["job"] != "-":
        data["job_id"] = parts["job"]
    kind = kind_of(parts["logger"], msg)
    data["event"] = kind
    data.update(parse_message(kind, msg))
    if escaped:
        data = without_surrogates(data)
    if exc is not None:
        data["exc"] = exc
    return LogRecord(line_time(parts["ts"]), file, line, data, host)


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
        if os.path.lexists(base):  # a dangling link too: files_of names it
            yield name, base


def label_dirs(dirs: Sequence[str]) -> list[tuple[str, str]]:
    """``(label, path)`` for each log directory: ``LABEL=PATH`` names it, else the label is the
    directory's name (its whole path when two names clash)."""
    out = []
    for text in dirs:
        label, sep, path = text.partition("=")
        if not sep or not re.fullmatch(r"[\w.@:-]+", label) or os.path.isdir(text):
            label, path = "", text
        out.append((label, os.path.normpath(path)))
    names = [os.path.basename(os.path.abspath(p)) for _, p in out]
    unique = {n for n in names if names.count(n) == 1}
    return [(lb or (n if n in unique else p), p) for (lb, p), n in zip(out, names, strict=True)]


def files_of(
    dirs: Sequence[tuple[str, str]], names: Iterable[str] = FILES, since: float | None = None,
    skipped: list[str] | None = None,
) -> list[tuple[str, str, str]]:  # fmt: skip
    """``(label, name, path)`` of every file a scan reads: the regular files (a symlink to one
    included) of the set. Files last written before ``since`` (their modification time) hold no
    newer line and are left out; the paths of the others that cannot be read (a FIFO, a device,
    a dangling link, a link loop) go to ``skipped``, with why."""
    names = tuple(names)
    out = []
    for label, log_dir in dirs:
        for name, path in iter_files(log_dir, names):
            try:
                st = os.stat(path)
                if not stat.S_ISREG(st.st_mode):
                    raise NotRegular(path)
            except OSError as exc:
                if skipped is not None:
                    skipped.append(f"{path} ({reason(exc)})")
                continue
            if not since or st.st_mtime >= since:
                out.append((label, name, path))
    return out


@dataclass
class Scan:
    """Counts of one scan; ``progress(n)`` (optional) is told every ~1 MiB of file bytes read.
    A file that cannot be read to its end (a damaged or truncated ``.gz``) is named in
    ``damaged``, and its unreadable rest counts as one line, skipped. A file that cannot be read
    at all (not a regular file, gone since it was listed) is named in ``unreadable``, with why.
    A line over :data:`~flask_diaglog.readfile.MAX_LINE` counts as one line, skipped."""

    progress: Callable[[int], None] | None = None
    lines: int = 0
    skipped: int = 0
    damaged: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def skipped_note(self) -> str:
        """What the commands say of the lines skipped."""
        return f"{self.skipped} of {self.lines} lines were not diaglog lines and were skipped"


def _lines(path: str, scan: Scan | None) -> Iterator[str | None]:
    """The lines of a file (gzipped or not), ``None`` for one over the limit (see
    :func:`~flask_diaglog.readfile.read_lines`); bytes read are reported to ``scan.progress``."""
    report = scan.progress if scan is not None else None
    try:
        raw = open_regular(path)
    except OSError as exc:  # rotated or compressed away since it was listed, or swapped
        if scan is not None:
            scan.unreadable.append(f"{path} ({reason(exc)})")
        return
    with raw:
        fh: Readable = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
        done = 0
        try:
            for data in read_lines(fh):
                if report is not None and raw.tell() - done >= _STEP:
                    pos = raw.tell()
                    report(pos - done)
                    done = pos
                yield None if data is None else data.decode("utf-8", "replace")
        except (OSError, EOFError, zlib.error):
            if scan is not None:
                scan.lines, scan.skipped = scan.lines + 1, scan.skipped + 1
                scan.damaged.append(path)
            return
        if report is not None:
            report(raw.tell() - done)


def _stream(
    label: str, name: str, paths: list[str], since: float | None, until: float | None, scan: Any
) -> Iterator[LogRecord]:
    for path in paths:
        for line in _lines(path, scan):
            rec = None if line is None else parse_line(line, name, label)
            if scan is not None:
                scan.lines += 1
                if rec is None and (line is None or line.strip()):
                    scan.skipped += 1
            if rec is None or (since and rec.ts < since) or (until and rec.ts > until):
                continue
            yield rec


def read_records(log_dir: str, names: Iterable[str] = FILES) -> Iterator[LogRecord]:
    """Every parsable record of the given files, file by file, oldest first within a file."""
    for name, path in iter_files(log_dir, names):
        yield from _stream("", name, [path], None, None, None)


def merge_records(
    dirs: Sequence[tuple[str, str]], names: Iterable[str] = FILES, *,
    since: float | None = None, until: float | None = None, scan: Scan | None = None,
) -> Iterator[LogRecord]:  # fmt: skip
    """The records of several ``(label, directory)`` pairs (see :func:`label_dirs`) and files,
    merged by time, between ``since`` and ``until`` (epoch seconds). Streams: each file is read
    once, line by line."""
    chains: dict[tuple[str, str], list[str]] = {}
    for label, name, path in files_of(dirs, names, since, scan.unreadable if scan else None):
        chains.setdefault((label, name), []).append(path)
    streams = [_stream(lb, nm, ps, since, until, scan) for (lb, nm), ps in chains.items()]
    return heapq.merge(*streams, key=lambda r: r.ts)


def tail_records(log_dir: str, name: str, max_bytes: int = 256 * 1024) -> list[LogRecord]:
    """The records in the last ``max_bytes`` of the current ``<name>.log`` (cheap on big files)."""
    path = os.path.join(log_dir, f"{name}.log")
    try:
        with open_regular(path) as fh:  # a FIFO would block, /dev/zero never end
            start = max(0, fh.seek(0, os.SEEK_END) - max_bytes)
            fh.seek(start)
            chunk = fh.read(max_bytes)
    except OSError:
        return []
    if start:
        chunk = chunk[chunk.find(b"\n") + 1 :]  # drop the partial first line
    recs = (parse_line(line, name) for line in chunk.decode("utf-8", "replace").split("\n"))
    return [rec for rec in recs if rec is not None]


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


def _route_key(d: dict[str, Any], job_id: str | None) -> str:
    """The line's url rule if it has one, :data:`NO_ROUTE` for a 404, else the folded path."""
    if d.get("route"):
        return f"{d.get('method')} {d['route']}"
    if d.get("status") == 404:
        return NO_ROUTE
    return f"{d.get('method')} {route_of(str(d.get('path')), job_id)}"


def _stat(table: dict[str, Stats], key: str) -> Stats:
    new = key if len(table) < MAX_ROUTES or key in table else "(other)"
    return table.setdefault(new, Stats()) if new not in table else table[new]


def job_outcome(data: dict[str, Any]) -> str:
    """How the run a ``job_end`` line ends went: ``"ok"``, ``"failed"``, or ``"retried"``: it
    failed, and its task queue runs it again (``retried: true``), so it is not a failed job.
    The one rule for :func:`summarize` and the dashboard."""
    if data.get("ok") is not False:
        return "ok"
    return "retried" if data.get("retried") is True else "failed"


def summarize(
    records: Iterable[LogRecord], since: float = 0.0, until: float | None = None, *,
    slowest: int = 10, failed: int = 50,
) -> dict[str, Any]:  # fmt: skip
    """``routes`` (see :func:`route_of`; 404s are one :data:`NO_ROUTE` row; ``errors`` are 5xx),
    ``stages`` and ``jobs`` (by function; ``errors`` are failures, see :func:`job_outcome`):
    :meth:`Stats.to_dict` each, by total time. ``failed_jobs``: their count; ``failed``: the last
    ``failed`` of them (ids, name, error); ``retried_jobs``: the count of failed attempts that
    their queue ran again; ``slowest``: the ``slowest`` requests, slowest first."""
    routes: dict[str, Stats] = {}
    stages: dict[str, Stats] = {}
    jobs: dict[str, Stats] = {}
    failures: deque[dict[str, Any]] = deque(maxlen=failed)
    slow: list[tuple[float, int, LogRecord]] = []
    failed_jobs = retried_jobs = n = 0
    for rec in records:
        if rec.ts < since or (until is not None and rec.ts > until):
            continue
        d, event = rec.data, rec.event
        if event == "request_end" and rec.file == "requests":
            ms = float(d.get("duration_ms", 0.0))
            _stat(routes, _route_key(d, rec.job_id)).add(ms, int(d.get("status") or 0) >= 500)
            n += 1
            item = (ms, n, rec)
            if len(slow) < slowest:
                heapq.heappush(slow, item)
            elif slowest and ms > slow[0][0]:
                heapq.heapreplace(slow, item)
        elif event == "stage" and rec.file in ("requests", "jobs"):
            ok = d.get("ok") is not False
            _stat(stages, str(d.get("stage"))).add(float(d.get("duration_ms", 0.0)), not ok)
        elif event == "job_end" and rec.file == "jobs":
            outcome = job_outcome(d)
            ms = float(d.get("duration_ms", 0.0))
            _stat(jobs, str(d.get("name"))).add(ms, outcome == "failed")
            if outcome == "retried":
                retried_jobs += 1
            elif outcome == "failed":
                failed_jobs += 1
                failures.append(_pick(rec, "job_id", "name", "error", "request_id"))
    tables = {"routes": routes, "stages": stages, "jobs": jobs}
    return {
        **{
            name: {k: s.to_dict() for k, s in sorted(t.items(), key=lambda kv: -kv[1].total)}
            for name, t in tables.items()
        },
        "failed_jobs": failed_jobs,
        "failed": list(failures),
        "retried_jobs": retried_jobs,
        "slowest": [  # duration_ms as counted: 0.0 for a line without one
            {**_pick(r, "request_id", "job_id", "method", "path", "status"), "duration_ms": ms}
            for ms, _, r in sorted(slow, key=lambda t: (-t[0], t[1]))
        ],
    }


def _pick(rec: LogRecord, *keys: str) -> dict[str, Any]:
    out = rec.to_dict()
    return {"ts": out["ts"], "host": rec.host, **{k: rec.data.get(k) for k in keys}}


# -- one id: its records and its timeline -----------------------------------------------------


def trace_records(ident: str, read: Callable[[], Iterable[LogRecord]]) -> list[LogRecord]:
    """Every record of request id or job id ``ident`` in time order, each once (``errors.log``
    repeats lines). For a job id, the lines without a job id of the requests that carry it (the
    one that created or enqueued it) are included. ``read()`` reads every file (see
    :func:`merge_records`); it is called a second time when there are such requests."""
    found = [r for r in read() if ident in (r.request_id, r.job_id)]
    requests = {r.request_id for r in found if r.job_id == ident and r.request_id} - {ident}
    if requests:  # read again, in the merged order: a request's lines before the job's
        found = [
            r
            for r in read()
            if ident in (r.request_id, r.job_id) or (r.job_id is None and r.request_id in requests)
        ]
    main = {(r.host, r.raw) for r in found if r.file != "errors"}
    return [r for r in found if r.file != "errors" or (r.host, r.raw) not in main]


@dataclass
class Span:
    """A bar of a timeline: a request, a job, or a stage of one (``depth`` > 0). Epoch seconds;
    ``end`` and ``outcome`` are ``None`` for work without an end line (in flight, or a killed
    process). ``outcome``: ``"ok"``, ``"failed"`` or ``"retried"`` (:func:`job_outcome`); ``ok``
    is ``outcome == "ok"``."""

    kind: str
    name: str
    host: str
    start: float
    end: float | None = None
    ok: bool | None = None
    depth: int = 0
    stages: list[Span] = field(default_factory=list)
    outcome: str | None = None

    @property
    def duration_ms(self) -> float | None:
        return None if self.end is None else (self.end - self.start) * 1000.0


#: Stages of one request or job beyond which they are shown flat (nesting is quadratic).
_NEST_MAX = 300
#: Kinds that imply their request or job when its start line is not in the records.
_IMPLIED = frozenset({"stage", "request_end", "request_error", "job_end", "progress"})
_EPS = 0.0015  # line times have millisecond resolution


def _inside(inner: Span, outer: Span) -> bool:
    """Whether ``outer`` is a longer stage whose interval holds ``inner`` (within rounding)."""
    if (outer.duration_ms or 0.0) <= (inner.duration_ms or 0.0):
        return False
    return outer.start - _EPS <= inner.start and (inner.end or 0) <= (outer.end or 0) + _EPS


def spans_of(records: Iterable[LogRecord]) -> list[Span]:
    """The requests and jobs among ``records`` (e.g. from :func:`trace_records`), each with its
    stages nested by time (a stage inside another's interval is one level deeper), in start
    order. A stage's start is its line's time less its duration."""
    spans: list[Span] = []
    open_: dict[tuple[str, ...], Span] = {}
    for rec in records:
        d, ev = rec.data, rec.event
        if rec.file == "jobs":
            key: tuple[str, ...] = (rec.host, "job", str(rec.job_id), str(rec.request_id))
        else:
            key = (rec.host, "request", str(rec.request_id))
        span = open_.get(key)
        if rec.file == "errors":
            continue  # repeats of lines of the other files
        if ev in ("request_start", "job_start") or (span is None and ev in _IMPLIED):
            span = open_[key] = Span(key[1], "", rec.host, rec.ts)
            spans.append(span)
        if span is None:
            continue
        if ev in ("request_start", "request_end", "request_error") and d.get("method"):
            status = f" {d['status']}" if d.get("status") is not None else ""
            span.name = f"{d['method']} {d.get('path')}{status}"
        elif ev in ("job_start", "job_end"):
            span.name = str(d.get("name", ""))
        if ev == "stage":
            ms = float(d.get("duration_ms", 0.0))
            ok = d.get("ok") is not False
            stage = Span("stage", str(d.get("stage")), rec.host, rec.ts - ms / 1000, rec.ts, ok)
            stage.outcome = "ok" if ok else "failed"
            span.stages.append(stage)
        elif ev in ("request_end", "job_end"):
            span.end = rec.ts
            span.start = rec.ts - float(d.get("duration_ms", 0.0)) / 1000  # the timer's
            # A 5xx, else the rule of summarize() and the dashboard (a request has no "ok").
            span.outcome = "failed" if int(d.get("status") or 0) >= 500 else job_outcome(d)
            span.ok = span.outcome == "ok"
            del open_[key]
    for span in spans:
        span.stages.sort(key=lambda s: s.start)
        if len(span.stages) <= _NEST_MAX:
            for stage in span.stages:
                stage.depth = 1 + sum(_inside(stage, other) for other in span.stages)
    return sorted(spans, key=lambda s: s.start)
