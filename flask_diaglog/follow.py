"""``tail -f``: the lines appended to log files from a given moment on, each printed once, in
order, across any number of rotations between two looks.

:class:`Follower` owns what has been read of each followed file: its inode, the position after
the last whole line read, its first line, and the file rotated just before it. After a rotation
it finds the lines that moved away among the backups :func:`~flask_diaglog.logread.iter_files`
lists (plain or gzipped, as the writer names them): the rest of the file it was reading, then
every backup rotated after that one, then the new file from its start. A file is known by its
first line (a millisecond timestamp and more), as compression gives a backup a new inode and
frees the old inode number for the next new file; by its inode only while it has no line yet.

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
from dataclasses import dataclass
from typing import IO

from .logread import LogRecord, Scan, iter_files, parse_line
from .readfile import MAX_LINE, open_log, open_regular, read_lines, reason

__all__ = ["Follower"]

Out = Callable[[LogRecord], None]
#: A file's first line is read up to this many bytes: enough to tell two files apart (it starts
#: with a millisecond timestamp), without reading a long traceback line whole.
_HEAD = 4096
#: Looks at the backups after a rotation while they keep moving (the last one is kept).
_ATTEMPTS = 20
#: What reading a damaged ``.gz`` raises.
_DAMAGED = (OSError, EOFError, zlib.error)


def _backups(path: str, name: str) -> list[str]:
    """The backups of ``path`` (the file ``name``), oldest first, as the writer names them."""
    return [p for _, p in iter_files(os.path.dirname(path), [name]) if p != path]


def _head(fh: IO[bytes]) -> bytes:
    """The first line of an open file (at most :data:`_HEAD` bytes); empty while it has none."""
    fh.seek(0)
    line = fh.readline(_HEAD)
    return line if line.endswith(b"\n") or len(line) == _HEAD else b""


@dataclass
class _File:
    """A file as it was read: its inode, and its first line once it has one."""

    ino: int
    head: bytes = b""

    def of(self, fh: IO[bytes]) -> bool:
        """Is the open file ``fh`` this file, plain or compressed since? Known by its first line
        when it had one: compressing gives a backup a new inode, and removing the plain copy
        frees the old inode number for the next new file."""
        if self.head:
            return _head(fh) == self.head
        return os.fstat(fh.fileno()).st_ino == self.ino


class Follower:
    """Follows ``<name>.log`` in each ``(label, directory)`` of ``dirs``, handing every new
    record to ``out`` and counting the lines in ``scan``. :meth:`mark` sets the starting point,
    each :meth:`poll` prints what was written since the previous one, :meth:`run` polls until
    interrupted."""

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
        #: path: the current file, the position after its last whole line read, and whether it
        #: is inside a line over MAX_LINE there.
        self._at: dict[str, tuple[_File, int, bool]] = {}
        #: path: the file rotated just before the current one (where a backup walk stops).
        self._before: dict[str, _File | None] = {}

    def mark(self) -> None:
        """Start at the current ends: lines written from now on are printed."""
        for _, name, path in self._files:
            with contextlib.suppress(OSError), open_regular(path) as fh:
                size = os.fstat(fh.fileno()).st_size
                self._at[path] = (_File(os.fstat(fh.fileno()).st_ino, _head(fh)), size, False)
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
            with fh:
                self._read(label, name, path, fh)

    def _read(self, label: str, name: str, path: str, fh: IO[bytes]) -> None:
        st = os.fstat(fh.fileno())
        seen = self._at.get(path)
        skipping = False
        if seen is None:
            cur, pos = _File(st.st_ino), 0  # appeared after mark(): all of it is new
        elif not seen[0].of(fh) or (not seen[0].head and self._backed_up(path, name)):
            # (A file that had no line yet is known by its inode, which a rotation may have
            # freed for the new file: then a new backup says it rotated.)
            self._rotated(label, name, path, seen, _File(st.st_ino, _head(fh)))
            cur, pos = _File(st.st_ino), 0
        else:
            cur, pos, skipping = seen
            if st.st_size < pos:
                pos, skipping = 0, False  # truncated
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
                    break  # a line being written waits for the next round
                self._emit([None], name, label)
                pos, skipping = pos + len(data), True
                continue
            self._emit(data[:end].split(b"\n"), name, label)
            pos += end
            if len(data) < MAX_LINE:
                break
        if not cur.head:
            cur.head = _head(fh)
        self._at[path] = (cur, pos, skipping)

    def _rotated(
        self, label: str, name: str, path: str, seen: tuple[_File, int, bool], current: _File
    ) -> None:
        """Print the unread rest of the rotated file ``seen``, then every backup rotated after
        it, oldest first; the ``current`` file (read next) and what was rotated after it are
        left for later rounds."""
        old, pos, skipping = seen
        for attempt in range(_ATTEMPTS):
            with ExitStack() as stack:
                unread, still = self._unread(path, name, old, pos, current, stack)
                if not still and attempt < _ATTEMPTS - 1:
                    continue  # the backups moved while they were opened: look again
                self._before[path] = old
                for fh, start, backup in reversed(unread):
                    try:
                        newest = _File(os.fstat(fh.fileno()).st_ino, _head(fh))
                        fh.seek(start)
                        self._emit(read_lines(fh, skipping if start else False), name, label)
                    except _DAMAGED:  # counted as one line, skipped, as every reader does
                        scan = self.scan
                        scan.lines, scan.skipped = scan.lines + 1, scan.skipped + 1
                        self._note(scan.damaged, backup)
                        continue
                    self._before[path] = newest
                return

    def _unread(
        self, path: str, name: str, old: _File, pos: int, current: _File, stack: ExitStack
    ) -> tuple[list[tuple[IO[bytes], int, str]], bool]:
        """The backups still to print, newest first, each open (on ``stack``) with where to
        start reading: opened newest first until the rotated file ``old``, or the one before it,
        is reached. False with them when a rotation or a compression moved the backups
        meanwhile (a name gone, or holding another file than the one opened under it)."""
        before = self._before.get(path)
        backups = _backups(path, name)
        unread: list[tuple[IO[bytes], int, str]] = []
        opened: list[tuple[str, int]] = []
        last = ""
        for backup in reversed(backups):
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
            opened.append((backup, os.fstat(fh.fileno()).st_ino))
            try:
                if current.of(fh):
                    unread.clear()  # the current file was rotated too: newer ones wait
                    continue
                if old.head and old.of(fh):
                    unread.append((fh, pos, backup))
                    break
                # A rotated file that had no line is read whole (pos is 0): it is not looked
                # for by its inode, which a newer backup may have taken since.
                if before is not None and before.of(fh):
                    break
            except (OSError, EOFError):
                continue  # a damaged gzip
            unread.append((fh, 0, backup))
        try:
            return unread, all(os.stat(p).st_ino == ino for p, ino in opened)
        except OSError:
            return unread, False

    def _backed_up(self, path: str, name: str) -> bool:
        """Whether a backup appeared since the one :meth:`mark` or the last rotation saw."""
        newest, before = self._newest_backup(path, name), self._before.get(path)
        return newest is not None and (before is None or newest.head != before.head)

    def _newest_backup(self, path: str, name: str) -> _File | None:
        for backup in reversed(_backups(path, name)):
            with contextlib.suppress(OSError, EOFError), open_log(backup) as fh:
                return _File(os.fstat(fh.fileno()).st_ino, _head(fh))
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
