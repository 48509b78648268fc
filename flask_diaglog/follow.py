"""``tail -f``: the lines appended to log files from a given moment on, each printed once, in
order, across any number of rotations between two looks, and counted as every reader counts.

:class:`Follower` keeps open the file it reads and the backup rotated just before it: an open
file's inode is never another file's, so device and inode tell exactly whether the name still
holds the file. The name holding another inode is a rotation by rename (diaglog's writer,
logrotate's default); the same inode shorter than what was read, or no longer holding the bytes
read last, was emptied in place (logrotate's ``copytruncate``). Either way it prints the rest of
the file it read, then every backup rotated after it, oldest first, then the new file from its
start.

Among the backups (:func:`~flask_diaglog.logread.iter_files`, plain or gzipped, as the writer
names them) a file is found as every reader finds a file again
(:class:`~flask_diaglog.readfile.Known`): by its inode while it is plain; a compressed backup (a
new file) or a copy by its content: it holds the file's last bytes, up to 4 KiB, at the same
offset. So only two backups alike to their last 4 KiB, timestamps included, could be taken for
each other.

Lines are counted in a :class:`~flask_diaglog.logread.Scan` as the other readers count them: a
line over :data:`~flask_diaglog.readfile.MAX_LINE` (never held whole) or that is not a diaglog
line is skipped and counted in ``skipped``; a backup that cannot be read to its end is named in
``damaged``, one that cannot be opened in ``unreadable``.
"""

from __future__ import annotations

import contextlib
import os
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import IO, Any

from .logread import LogRecord, Scan, iter_files, parse_line
from .readfile import MAX_LINE, Known, ident, open_log, open_regular, read_lines, reason

__all__ = ["Follower"]

Out = Callable[[LogRecord], None]
#: Looks at the backups after a rotation while they keep moving (the last one is kept).
_ATTEMPTS = 20
#: What reading a damaged ``.gz`` raises.
_DAMAGED = (OSError, EOFError, zlib.error)


def _backups(path: str, name: str) -> list[str]:
    """The backups of ``path`` (the file ``name``), oldest first, as the writer names them."""
    return [p for _, p in iter_files(os.path.dirname(path), [name]) if p != path]


@dataclass(eq=False)
class _File(Known):
    """A file held open on ``fh`` (so that its inode stays its own), known again by device and
    inode, or by its tail in a copy of it (a compressed backup, a ``copytruncate`` copy)."""

    fh: IO[bytes] = field(kw_only=True)


@dataclass(eq=False)
class _Reading(_File):
    """The file being followed: ``pos`` is after its last whole line read, the tail the bytes
    just before it; ``skipping`` while ``pos`` is inside a line over the limit."""

    pos: int = 0
    skipping: bool = False

    def advance(self, pos: int) -> None:
        self.pos = pos
        self.mark(self.fh, pos)


def _open(fh: IO[bytes]) -> _Reading:
    """The file ``fh`` to be followed from its start."""
    return _Reading(*ident(fh), fh=fh)


def _held(fh: Any, path: str) -> _File:
    """The open backup ``fh`` (at ``path``) held on its own descriptor: a ``.gz`` is known by its
    inode (it is never compressed again), a plain one by its last bytes too."""
    own = os.fdopen(os.dup(fh.fileno()), "rb")
    held = _File(*ident(own), fh=own)
    if not path.endswith(".gz"):
        held.mark(own)
    return held


class Follower:
    """Follows ``<name>.log`` in each ``(label, directory)`` of ``dirs``, handing every new
    record to ``out`` and counting the lines in ``scan``. :meth:`mark` sets the starting point,
    each :meth:`poll` prints what was written since the previous one, :meth:`run` polls until
    interrupted. It holds files open: :meth:`close` it (or use it as a context manager)."""

    def __init__(
        self,
        dirs: Sequence[tuple[str, str]],
        names: Sequence[str],
        out: Out,
        scan: Scan | None = None,
    ) -> None:
        self.out = out
        #: The lines read, and the ones skipped, as every reader counts them.
        self.scan = scan if scan is not None else Scan()
        self._files = [
            (label, name, os.path.join(log_dir, f"{name}.log"))
            for label, log_dir in dirs
            for name in names
        ]
        #: path: the file being followed (open).
        self._at: dict[str, _Reading] = {}
        #: path: the file rotated just before it (open), where a backup walk stops.
        self._before: dict[str, _File | None] = {}

    def __enter__(self) -> Follower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Let go of the files held open."""
        for held in [*self._at.values(), *self._before.values()]:
            if held is not None:
                held.fh.close()
        self._at.clear()
        self._before.clear()

    def mark(self) -> None:
        """Start at the current ends: lines written from now on are printed."""
        for _, name, path in self._files:
            try:
                fh = open_regular(path)
            except OSError:
                continue
            cur = _open(fh)
            cur.advance(os.fstat(fh.fileno()).st_size)
            self._at[path] = cur
            self._before[path] = self._newest_backup(path, name)

    def run(self, interval: float = 0.25, after: Callable[[], None] | None = None) -> None:
        """Poll every ``interval`` seconds, until interrupted (Ctrl-C); ``after()`` after each."""
        while True:
            self.poll()
            if after is not None:
                after()
            time.sleep(interval)

    def poll(self) -> None:
        """Print the whole lines written since the last poll (or :meth:`mark`)."""
        for label, name, path in self._files:
            try:
                fh = open_regular(path)  # a FIFO or a device is never read
            except OSError:
                continue  # between a rotation and the new file: next round
            st = os.fstat(fh.fileno())
            cur: _Reading | None = self._at.get(path)
            if cur is None:  # appeared after mark(): all of it is new
                cur = self._at[path] = _open(fh)
                if path not in self._before:
                    self._before[path] = self._newest_backup(path, name)
            elif cur.same(st) and not cur.emptied(cur.fh, st.st_size):
                fh.close()
            else:
                fh.close()
                cur = self._rotated(label, name, path, cur, emptied=cur.same(st))
                if cur is None:
                    continue
            self._read(cur, name, label)

    def _read(self, cur: _Reading, name: str, label: str) -> None:
        """Print the whole lines after ``cur.pos``; a line still being written waits."""
        fh, pos, skipping = cur.fh, cur.pos, cur.skipping
        while True:  # MAX_LINE at a time: a longer line is skipped, never held
            fh.seek(pos)
            data = fh.read(MAX_LINE)
            if skipping:  # the rest of a line over MAX_LINE (counted when it was found)
                nl = data.find(b"\n")
                if nl < 0:
                    pos += len(data)
                    if len(data) < MAX_LINE:
                        break
                    continue
                pos, skipping = pos + nl + 1, False
                continue
            end = data.rfind(b"\n") + 1
            if not end:
                if len(data) < MAX_LINE:
                    break  # a line being written
                self._emit([None], name, label)
                pos, skipping = pos + len(data), True
                continue
            self._emit(data[:end].split(b"\n"), name, label)
            pos += end
            if len(data) < MAX_LINE:
                break
        cur.skipping = skipping
        if pos != cur.pos:
            cur.advance(pos)

    def _rotated(
        self, label: str, name: str, path: str, old: _Reading, emptied: bool
    ) -> _Reading | None:
        """``old`` was rotated away from ``path``, or ``emptied`` in place: print its rest (from
        its descriptor, or from its copy), then every backup rotated after it, oldest first.
        Returns the file ``path`` holds now, to be read from its start (``None``: none yet)."""
        before = self._before.get(path)
        if not emptied:  # its content is whole: known by its end, and read from its descriptor
            old.mark(old.fh)
        for attempt in range(_ATTEMPTS):
            with ExitStack() as stack:
                try:
                    fh = open_regular(path)
                    cur = _open(fh)
                except OSError:
                    cur = None
                found, still = self._unread(path, name, old, emptied, before, cur, stack)
                if not still and attempt < _ATTEMPTS - 1:
                    if cur is not None:
                        cur.fh.close()
                    continue  # the backups moved while they were opened: look again
                if not emptied:
                    old.fh.seek(old.pos)
                    self._emit(read_lines(old.fh, old.skipping), name, label)
                for fh, start, skipping, backup in reversed(found):
                    self._print(fh, start, skipping, backup, name, label)
                newest: _File | None = None
                if found:  # the file just before cur: the newest one printed
                    newest = _held(found[0][0], found[0][3])
                elif not emptied:
                    newest = old
                    old.mark(old.fh)
                if newest is not old:
                    old.fh.close()
                if newest is not None:
                    if before is not None:
                        before.fh.close()
                    self._before[path] = newest
                if cur is None:
                    del self._at[path]
                else:
                    self._at[path] = cur
                return cur
        return None  # not reached: the last attempt returns

    def _unread(
        self,
        path: str,
        name: str,
        old: _Reading,
        emptied: bool,
        before: _File | None,
        cur: _Reading | None,
        stack: ExitStack,
    ) -> tuple[list[tuple[Any, int, bool, str]], bool]:
        """The backups to print, newest first, each open (on ``stack``) with where to start:
        opened newest first until the rotated file ``old`` (printed from where it was read when
        it was ``emptied``: its copy), or the one ``before`` it, is reached. False with them
        when a rotation or a compression moved the backups or the current file meanwhile."""
        unread: list[tuple[Any, int, bool, str]] = []
        opened: list[tuple[str, _File]] = []
        last = ""
        for backup in reversed(_backups(path, name)):
            if backup.removesuffix(".gz") == last:
                continue  # its plain and compressed copies both exist for a moment
            last = backup.removesuffix(".gz")
            try:
                fh = stack.enter_context(open_log(backup))
            except FileNotFoundError:
                return unread, False
            except OSError as exc:
                self._note(self.scan.unreadable, f"{backup} ({reason(exc)})")
                continue
            st = os.fstat(fh.fileno())
            opened.append((backup, _File(st.st_dev, st.st_ino, fh=fh)))
            try:
                if cur is not None and cur.same(st):
                    unread.clear()  # the current file was rotated too: newer ones wait
                    continue
                if old.is_in(fh, st):
                    if emptied:
                        unread.append((fh, old.pos, old.skipping, backup))
                    break
                if before is not None and before.is_in(fh, st):
                    break
            except _DAMAGED:
                pass  # a damaged gzip: printed as far as it reads
            unread.append((fh, 0, False, backup))
        try:
            moved = any(not f.same(os.stat(p)) for p, f in opened)
            return unread, not moved and (cur is None or cur.same(os.stat(path)))
        except OSError:
            return unread, False

    def _print(
        self, fh: Any, start: int, skipping: bool, backup: str, name: str, label: str
    ) -> None:
        """Print the lines of an open backup from ``start``; a damaged one as far as it reads."""
        try:
            fh.seek(start)
            self._emit(read_lines(fh, skipping), name, label)
        except _DAMAGED:  # counted as one line, skipped, as every reader does
            scan = self.scan
            scan.lines, scan.skipped = scan.lines + 1, scan.skipped + 1
            self._note(scan.damaged, backup)

    def _newest_backup(self, path: str, name: str) -> _File | None:
        for backup in reversed(_backups(path, name)):
            with contextlib.suppress(OSError), open_log(backup) as fh:
                return _held(fh, backup)
        return None

    @staticmethod
    def _note(notes: list[str], text: str) -> None:
        if text not in notes:
            notes.append(text)

    def _emit(self, lines: Iterable[bytes | None], name: str, label: str) -> None:
        scan = self.scan
        for line in lines:
            if line == b"":
                continue  # empty lines are left out, as every reader does
            rec = None if line is None else parse_line(line.decode("utf-8", "replace"), name, label)
            scan.lines += 1
            if rec is None:
                if line is None or line.strip():
                    scan.skipped += 1
                continue
            self.out(rec)
