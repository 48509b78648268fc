"""The dashboard's index of the log files: every request and job of every worker, read
incrementally.

This module owns reading ``requests.log`` and ``jobs.log`` (with their rotated and gzipped
backups) for the dashboard. Lines are parsed only through :func:`flask_diaglog.logread.parse_line`
(the vocabulary of :mod:`flask_diaglog.trail` and the layouts of
:mod:`flask_diaglog.files.render`); this module only folds the parsed records into one
:class:`Item` per request or job run.

**Incremental.** Each file is known again as ``tail -f`` knows it, by inode or, for a copy, by
content (see :mod:`flask_diaglog.dashboard.seen`): a file is never read twice, whatever its name
becomes, and two files that merely start alike are two files. Per file the index remembers how
many bytes it has folded in; a refresh reads only the bytes after that, and only whole lines of
the current files (a torn tail waits for its newline). A file emptied in place
(``copytruncate``) is a new file from its start. A refresh works for at most ``budget`` seconds,
oldest file first, so a page never waits for a cold read of a big log set: it shows what is
indexed so far and says how far the index is.

**Bad data.** A line that is not a diaglog line of either layout (torn, garbled, foreign, or
with a known field of the wrong type) is skipped and counted in :attr:`Index.skipped`; so is a
line that fails to fold in, and the index reads on past it. A name in the set that it cannot
read (a FIFO, a dangling link) is named in :attr:`Index.unreadable`. A missing or unreadable log
directory is reported in :attr:`Index.problem`, never raised.

**Where the lines are.** For the detail page each trace (a request id, or ``job:<id>`` for a job
without one) keeps *spans*: ``[file number, first byte, end byte]`` of its lines, so reading one
request back reads only its own stretch of one or two files.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import zlib
from typing import Any

from ..logread import LogRecord, iter_files, job_outcome, parse_line
from ..readfile import MAX_LINE, NotRegular, ident, open_log, reason
from ..trail import LEVELS
from .item import Item, interned
from .seen import HEAD, SeenFile, SeenFiles, inodes

__all__ = ["Index", "Item"]

#: The files the dashboard reads (``errors.log`` repeats lines of both).
NAMES = ("requests", "jobs")
#: Bytes read and parsed per step of a refresh: a longer line is skipped and counted, as
#: every reader skips a line over :data:`~flask_diaglog.readfile.MAX_LINE`.
CHUNK = MAX_LINE
#: Items kept at most; beyond that the oldest are dropped.
MAX_ITEMS = 300_000
#: A new span starts when a trace's next line is further than this from its last span.
SPAN_GAP = 256 * 1024
#: Warning-and-above messages kept per item for the free-text search.
NOTES = 5
_WARNING = LEVELS["WARNING"]
#: What reading a file that is there may raise: a damaged or truncated ``.gz`` among them.
_UNREADABLE = (OSError, EOFError, zlib.error)


def _head(fh: Any) -> bytes | None:
    """The first bytes (up to :data:`~flask_diaglog.dashboard.seen.HEAD`) of the open file
    ``fh``; ``None`` when it cannot be read (a damaged ``.gz``)."""
    try:
        head: bytes = fh.read(HEAD)
    except OSError as exc:
        if exc.errno is not None or isinstance(exc, NotRegular):
            raise
        return None  # not gzip at all
    except _UNREADABLE:
        return None
    return head


class Index:
    """An incremental index of one log directory (thread-safe: hold :attr:`lock` to read)."""

    def __init__(self, log_dir: str, *, max_items: int = MAX_ITEMS) -> None:
        self.log_dir = log_dir
        self.max_items = max_items
        #: Held while the index changes; readers hold it too.
        self.lock = threading.RLock()
        #: Every item, in the order first seen.
        self.items: list[Item] = []
        #: Items per request id (a reused id may name several), and per job id.
        self.by_request: dict[str, list[Item]] = {}
        self.by_job: dict[str, list[Item]] = {}
        #: Where each trace's lines are: ``[file number, start, end]``.
        self.spans: dict[str, list[list[Any]]] = {}
        #: Lines skipped as torn, garbled or foreign.
        self.skipped = 0
        #: Lines read and folded in.
        self.lines = 0
        #: Why the log directory cannot be read, or ``None``.
        self.problem: str | None = None
        #: The names in the set it cannot read, with why (``jobs.log.1 (not a regular file)``).
        self.unreadable: list[str] = []
        #: Compressed backups that cannot be read to their end, by inode: their current names.
        self._damaged: dict[tuple[int, int], str] = {}
        #: Changes whenever items change (cache key for queries).
        self.version = 0
        self._files = SeenFiles()
        self._open_jobs: dict[tuple[str | None, str | None], list[Item]] = {}
        self._seq = 0
        #: Bytes still to read at the last refresh, and the bytes of the set.
        self.pending = 0
        self.total = 0

    # -- reading ------------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        """Whether every byte present at the last refresh is indexed."""
        return self.pending == 0

    @property
    def damaged(self) -> list[str]:
        """The names of the compressed backups in the set that cannot be read to their end
        (truncated or corrupt): their lines up to the damage are indexed, and each counts as
        one skipped line."""
        return sorted(self._damaged.values())

    def _damage(self, path: str) -> None:
        try:
            st = os.stat(path)
        except OSError:
            return
        if (st.st_dev, st.st_ino) not in self._damaged:
            self._damaged[(st.st_dev, st.st_ino)] = os.path.basename(path)
            self.skipped += 1
            self.version += 1

    def _scan(self) -> list[SeenFile]:
        """The files of the set, oldest first per name, keyed; forgets files that are gone."""
        self.unreadable = []
        try:
            if not os.path.isdir(self.log_dir):
                exists = os.path.exists(self.log_dir)
                raise (NotADirectoryError if exists else FileNotFoundError)()
            os.listdir(self.log_dir)
        except FileNotFoundError:
            self.problem = f"The log directory {self.log_dir} does not exist."
            return []
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            if isinstance(exc, NotADirectoryError):
                why = "it is not a directory"
            self.problem = f"The log directory {self.log_dir} cannot be read: {why}."
            return []
        self.problem = None
        found: list[SeenFile] = []
        listed: dict[tuple[int, int], str] = {}
        unreadable: list[str] = []
        now = time.monotonic()
        listing = list(iter_files(self.log_dir, NAMES))
        paths = {p for _, p in listing}
        there = inodes(p for _, p in listing)  # opened or not
        for name, path in listing:
            if path.endswith(".gz") and path[:-3] in paths:
                continue  # a backup being compressed: its plain copy is read while it is there
            f = self._look(name, path, now, listed, unreadable, there)
            if f is None and not path.endswith((".gz", ".log")) and not os.path.lexists(path):
                # compressed since the listing
                f = self._look(name, path + ".gz", now, listed, unreadable, there)
            if f is not None and f not in found:
                found.append(f)
        self._damaged = {k: listed[k] for k in self._damaged if k in listed}
        self.unreadable = unreadable
        self._files.scanned(now, there)
        return found

    def _look(
        self,
        name: str,
        path: str,
        now: float,
        listed: dict[tuple[int, int], str],
        unreadable: list[str],
        there: dict[tuple[int, int], str],
    ) -> SeenFile | None:
        """The file at ``path`` as the scan of ``now`` finds it (see
        :meth:`SeenFiles.find <flask_diaglog.dashboard.seen.SeenFiles.find>`; ``there``: the
        inodes of the listing); ``None`` while it is empty, or when it is damaged, gone, or
        cannot be read (then named in ``unreadable``). Its inode goes in ``listed``."""
        try:
            with open_log(path) as fh:
                st = os.fstat(fh.fileno())
                listed[(st.st_dev, st.st_ino)] = os.path.basename(path)
                head = _head(fh)
                if head is None and path.endswith(".gz"):
                    self._damage(path)
                if not head:
                    return None
                return self._files.find(fh, st, head, name, path, now, there)
        except OSError as exc:
            if os.path.lexists(path):  # not renamed since the listing: a file it cannot read
                unreadable.append(f"{os.path.basename(path)} ({reason(exc)})")
            return None

    def refresh(self, budget: float = 0.15) -> None:
        """Fold in what was written since the last refresh, for at most ``budget`` seconds."""
        with self.lock:
            deadline = time.perf_counter() + budget
            files = self._scan()
            pending = 0
            for f in files:
                if time.perf_counter() < deadline:
                    self._read(f, deadline)
                if f.gz:
                    pending += 0 if f.done else f.size
                else:
                    pending += max(0, f.size - f.offset)
            self.total = sum(f.size for f in files)
            self.pending = pending

    def _read(self, f: SeenFile, deadline: float) -> None:
        if f.done:
            return
        current = os.path.basename(f.path) == f"{f.name}.log"
        if not f.gz and f.offset >= f.size:
            return
        try:
            with open_log(f.path) as fh:
                if ident(fh) != (f.dev, f.ino):
                    return  # renamed since the listing: another file has this name now
                try:
                    self._read_on(f, fh, current, deadline)
                finally:
                    if not f.gz and f.offset != f.at + len(f.tail):
                        f.mark(fh, f.offset)  # what tells it again (see readfile.Known)
        except FileNotFoundError:
            return
        except _UNREADABLE:
            if f.gz:  # damaged: its lines up to the damage, then never again
                self._salvage(f)
                f.done = True
                self._damage(f.path)

    def _read_on(self, f: SeenFile, fh: Any, current: bool, deadline: float) -> None:
        """Fold in the lines of ``f`` (open on ``fh``) after ``f.offset`` until ``deadline``."""
        fh.seek(f.offset)
        while time.perf_counter() < deadline:
            data = fh.read(CHUNK)
            if not data:
                f.done = f.gz  # a compressed backup never changes again
                return
            at_end = len(data) < CHUNK if f.gz else f.offset + len(data) >= f.size
            used = self._feed(f, data, f.offset, final=at_end and not current)
            if used == 0 and not at_end:
                used = self._skip_long_line(fh, len(data))
            f.offset += used
            if at_end and not f.gz:
                return  # a torn tail of the live file waits for its newline
            if used < len(data):
                fh.seek(f.offset)

    def _salvage(self, f: SeenFile) -> None:
        """Fold in the whole lines of a damaged ``.gz`` after ``f.offset``, up to the damage."""
        with contextlib.suppress(*_UNREADABLE), open_log(f.path) as fh:
            fh.seek(f.offset)
            for line in iter(lambda: fh.readline(CHUNK), b""):  # a longer line ends it
                if not line.endswith(b"\n"):
                    break
                f.offset += self._feed(f, line, f.offset, final=True)

    def _skip_long_line(self, fh: Any, read: int) -> int:
        """Skip a line longer than :data:`CHUNK` (counted as skipped); the bytes it took."""
        skipped = read
        while True:
            data = fh.read(CHUNK)
            nl = data.find(b"\n")
            if nl >= 0 or not data:
                self.skipped += 1
                return skipped + (nl + 1 if nl >= 0 else len(data))
            skipped += len(data)

    def _feed(self, f: SeenFile, data: bytes, base: int, *, final: bool) -> int:
        """Fold the whole lines of ``data`` (read at ``base``) in; the bytes consumed."""
        end = len(data) if final else data.rfind(b"\n") + 1
        pos = 0
        key, name, add = f.number, f.name, self._add
        for raw in data[:end].split(b"\n"):
            start = pos
            pos += len(raw) + 1
            if not raw:
                continue
            rec = parse_line(raw.decode("utf-8", "replace"), name)
            if rec is None or not rec.ts:
                self.skipped += 1
                continue
            try:
                add(rec, key, base + start, base + min(pos, end))
            except Exception:  # a line no reader foresaw: skipped, never read again
                self.skipped += 1
                continue
            self.lines += 1
        self.version += 1
        if len(self.items) > self.max_items:
            self._drop_oldest()
        return end

    # -- folding records into items -----------------------------------------------------------

    def _new(self, kind: str, rid: str | None, jid: str | None) -> Item:
        self._seq += 1
        item = Item(kind, self._seq, rid, jid)
        self.items.append(item)
        if rid is not None:
            self.by_request.setdefault(rid, []).append(item)
        if jid is not None:
            self.by_job.setdefault(jid, []).append(item)
        return item

    def _set_job(self, item: Item, jid: str | None) -> None:
        if jid is not None and item.job_id is None:
            item.job_id = jid
            self.by_job.setdefault(jid, []).append(item)

    def _request(self, rid: str, jid: str | None, opening: bool) -> Item:
        """The request a ``requests.log`` line belongs to. A start line opens a new one, unless
        a later line of it was read first (a backup listed late): then it completes that one."""
        for item in reversed(self.by_request.get(rid, ())):
            if item.kind == "request":
                if not opening or not item.opened:
                    return item
                break
        return self._new("request", rid, jid)

    def _job(self, rec: LogRecord, name: str | None) -> Item:
        """The run a ``jobs.log`` line belongs to: a ``job_start`` opens one, a ``job_end``
        closes the oldest open run of that function, other lines go to the oldest open run, or
        when none is open, to the last run if its process wrote them after its end (RQ's report
        of a failed job)."""
        rid, jid, ev = rec.request_id, rec.job_id, rec.event
        key = (rid, jid)
        runs = self._open_jobs.get(key)
        table = self.by_request.get(rid, ()) if rid else self.by_job.get(jid or "", ())
        if ev == "job_start":
            for item in table:
                if item.kind == "job" and not item.opened and item.name in (None, name):
                    return item  # its end (or a later line) was read first
        elif runs:
            for i, item in enumerate(runs):
                if ev != "job_end":
                    return item
                if item.name is None or item.name == name:
                    del runs[i]
                    if not runs:
                        del self._open_jobs[key]
                    return item
        elif ev != "job_end":
            pid = rec.data.get("pid")
            for last in reversed(table):
                if last.kind == "job" and (last.request_id, last.job_id) == key:
                    if last.end is not None and last.end <= rec.ts and last.pid == pid:
                        return last
                    break
        item = self._new("job", rid, jid)
        if ev != "job_end":
            self._open_jobs.setdefault(key, []).append(item)
        return item

    def _add(self, rec: LogRecord, fkey: int, start: int, end: int) -> None:
        d = rec.data
        ev = rec.event
        rid = rec.request_id
        jid = rec.job_id
        trace = rid or (f"job:{jid}" if jid else None)
        if trace is None:
            return  # a line outside any request or job: nothing to attach it to
        spans = self.spans.get(trace)
        if spans is None:
            self.spans[trace] = [[fkey, start, end]]
        else:
            last = spans[-1]
            if last[0] == fkey and start - last[2] <= SPAN_GAP:
                last[2] = end
            else:
                spans.append([fkey, start, end])
        level = LEVELS.get(str(d.get("level")), 0)
        if rec.file == "requests":
            if rid is None:
                return
            item = self._request(rid, jid, ev == "request_start")
        else:
            item = self._job(rec, d.get("name") if ev in ("job_start", "job_end") else None)
        self._set_job(item, jid)
        if level > item.level:
            item.level = level
        if ev in ("request_start", "job_start"):
            item.opened = True
            item.ts = rec.ts
            item.pid = d.get("pid")
            item.host = interned(d.get("host"))
            if ev == "job_start":
                item.name = interned(d.get("name"))
            else:
                item.where(d)
        elif ev in ("request_end", "job_end"):
            item.end = rec.ts
            ms = d.get("duration_ms")
            item.duration_ms = float(ms) if isinstance(ms, (int, float)) else None
            if not item.ts:
                item.ts = rec.ts - (item.duration_ms or 0.0) / 1000.0
            if isinstance(d.get("stages"), dict):
                item.stages = {interned(k): v for k, v in d["stages"].items()}
            item.aborted = bool(d.get("aborted"))
            item.slow = bool(d.get("slow"))
            item.hung = max(item.hung, int(d.get("hung") or 0))
            if ev == "request_end":
                status = d.get("status")
                item.status = status if isinstance(status, int) else None
                item.where(d)
            else:
                item.name = interned(d.get("name")) or item.name
                item.outcome = job_outcome(d)
                if d.get("error"):
                    item.error = str(d["error"])
        elif ev == "request_error":
            item.error = str(d.get("error") or d.get("msg") or "")
            item.where(d)
        elif ev == "job_rejected":
            item.rejected = str(d.get("reason") or "rejected")
        elif ev == "hang":
            item.hung = max(item.hung, int(d.get("hung") or 1))
        elif ev == "progress":
            item.progress = {"fraction": d.get("fraction"), "message": d.get("message")}
        if ev == "log" and level >= _WARNING:
            notes = item.notes
            if notes is None:
                notes = item.notes = []
            if len(notes) < NOTES:
                notes.append(str(d.get("msg", ""))[:200])
        if not item.ts:
            item.ts = rec.ts

    def _drop_oldest(self) -> None:
        keep = sorted(self.items, key=lambda i: i.ts)[-(self.max_items * 9 // 10) :]
        kept = set(map(id, keep))
        self.items = [i for i in self.items if id(i) in kept]
        for table in (self.by_request, self.by_job):
            for k in list(table):
                live = [i for i in table[k] if id(i) in kept]
                if live:
                    table[k] = live
                else:
                    del table[k]
        traces = set(self.by_request) | {f"job:{j}" for j in self.by_job}
        for k in [k for k in self.spans if k not in traces]:
            del self.spans[k]

    # -- reading a trace back -----------------------------------------------------------------

    def trace_lines(self, trace_ids: list[str]) -> list[LogRecord]:
        """Every record of the given traces (request ids, or ``job:<id>``), in file order.

        Lines whose file has gone (rotated out of the set) are not there any more.
        """
        with self.lock:
            wanted: list[tuple[SeenFile, int, int]] = []
            for t in trace_ids:
                for fkey, start, end in self.spans.get(t, ()):
                    f = self._files.by_number.get(fkey)
                    if f is not None:
                        wanted.append((f, start, end))
            paths = [(f.path, f.name, (f.dev, f.ino), start, end) for f, start, end in wanted]
        seen: set[tuple[str, int]] = set()
        out: list[LogRecord] = []
        for path, name, inode, start, end in paths:
            try:
                with open_log(path) as fh:
                    if ident(fh) != inode:
                        continue  # rotated since: these lines are not at this name any more
                    fh.seek(start)
                    data = fh.read(end - start)
            except _UNREADABLE:
                continue
            pos = start
            for raw in data.split(b"\n"):
                at = pos
                pos += len(raw) + 1
                if not raw or (path, at) in seen:
                    continue
                seen.add((path, at))
                with contextlib.suppress(RecursionError):
                    rec = parse_line(raw.decode("utf-8", "replace"), name)
                    if rec is not None and rec.ts:
                        out.append(rec)
        out.sort(key=lambda r: r.ts)
        return out
