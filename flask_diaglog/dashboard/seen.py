"""The files of a log set that the dashboard's index has seen, told apart from one refresh to the
next without being held open.

A file is known again as ``tail -f`` knows it (:class:`~flask_diaglog.readfile.Known`): by
device and inode, which a rename by rotation keeps, while it still holds what was read of it;
else, for a backup, by content: a compressed backup or a ``copytruncate`` copy holds the bytes
read last at the same offset. Two files that merely start with the same line are two files.

Files are not held open (a removed backup would keep its disk space), so an inode may name
another file by the next refresh: an inode is taken for the file only while the file's first
bytes (its *head*) and its kind (plain or ``.gz``) agree, and a file whose inode is no longer in
a listing is known by content only from then on (one that is listed but could not be opened
keeps its inode). Only the files that start with the same line are compared by content (a copy
does), and the current file never is: the new file that took its name after a rotation may
start with the same line as the one rotated away, and is a new file.

A copy of a file that is still there, not emptied (``copytruncate`` between its copy and its
truncate, the copy whole or part-written), is neither that file nor a new one: it is passed
over until the file it copies is gone or emptied, then known by content.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from collections.abc import Iterable
from typing import Any

from ..readfile import TAIL, Known, open_log

__all__ = ["SeenFile", "SeenFiles", "inodes"]

#: Seconds a file no longer listed is remembered (so a compressed copy is not read again).
FORGET_AFTER = 600.0
#: The first bytes of a file kept to tell an inode reused by another file.
HEAD = 4096
#: What reading a damaged ``.gz`` raises.
_DAMAGED = (OSError, EOFError, zlib.error)


class SeenFile(Known):
    """One file of the set: ``number`` names it (in the index's spans), ``path`` is where it was
    last found, ``offset`` how far it is read, ``done`` once a ``.gz`` is read whole. ``head``
    is its first bytes (as many as it held when last found, up to :data:`HEAD`), ``key`` its
    first line: a copy of it has the same."""

    def __init__(self, number: int, head: bytes, key: bytes, name: str, st: os.stat_result):
        super().__init__(st.st_dev, st.st_ino)
        self.number = number
        self.head = head
        self.key = key
        self.name = name
        self.path = ""
        self.gz = False
        self.offset = 0
        self.size = 0
        self.done = False
        #: When a scan last found it (``time.monotonic()``).
        self.seen = 0.0

    def begins(self, head: bytes) -> bool:
        """Could a file whose first bytes are ``head`` be this file (the shorter of the two
        heads starts the longer)?"""
        n = min(len(head), len(self.head))
        return head[:n] == self.head[:n]

    def is_at(self, fh: Any, st: os.stat_result, head: bytes, gz: bool) -> bool:
        """Is the file open on ``fh`` (``st`` its ``fstat``, ``head`` its first bytes, ``gz``
        its kind) this file by its inode: the same inode, kind and head, not emptied in place?"""
        # A .gz never changes; a plain file may have been emptied in place.
        same = self.same(st) and self.gz == gz and self.begins(head)
        return same and (gz or not self.emptied(fh, st.st_size))


class SeenFiles:
    """The files seen so far, by number and by first line. Not thread-safe: the index calls it
    under its lock."""

    def __init__(self) -> None:
        self.by_number: dict[int, SeenFile] = {}
        self._keyed: dict[bytes, list[SeenFile]] = {}
        self._numbered = 0

    def find(
        self,
        fh: Any,
        st: os.stat_result,
        head: bytes,
        name: str,
        path: str,
        now: float,
        listed: dict[tuple[int, int], str],
    ) -> SeenFile | None:
        """The file at ``path`` (of the set ``name``) found by the scan of ``now``, open on
        ``fh`` (``st`` its ``fstat``, ``head`` its first :data:`HEAD` bytes): one known by its
        inode, else (a backup) one known by its content that this scan has not found yet, else a
        new one. ``None`` while it holds no whole line, or while it is a copy of a file that is
        still there (a ``copytruncate`` copy before the truncate). ``listed``: the inodes of the
        scan's listing, with their paths."""
        gz = path.endswith(".gz")
        nl = head.find(b"\n")
        if nl < 0:
            return None
        key = head[: nl + 1]
        alike = self._keyed.setdefault(key, [])
        for f in alike:
            if f.name == name and f.same(st):
                if f.is_at(fh, st, head, gz):
                    break
                f.dev = f.ino = -1  # another file's inode now: its lines are elsewhere, or gone
        else:
            copy = os.path.basename(path) != f"{name}.log"
            for f in alike:
                if copy and f.name == name and f.begins(head):
                    if _copying(f, fh, st, gz, listed):
                        return None  # its lines are read where they are
                    if f.seen == now:
                        continue
                    with contextlib.suppress(*_DAMAGED):  # a damaged .gz is no copy
                        if f.holds(fh):
                            break
            else:
                self._numbered += 1
                f = SeenFile(self._numbered, head, key, name, st)
                self.by_number[f.number] = f
                alike.append(f)
        if len(head) > len(f.head):
            f.head = head
        f.dev, f.ino = st.st_dev, st.st_ino
        f.path, f.gz, f.size, f.seen = path, gz, st.st_size, now
        return f

    def scanned(self, now: float, listed: dict[tuple[int, int], str]) -> None:
        """After the scan of ``now`` (``listed``: the inodes of its listing): the files it did
        not find lose their inode (it may be another file's soon) unless the inode is still
        listed (a file that could not be opened this time: found by its inode once it can be,
        and remembered meanwhile); those not found for :data:`FORGET_AFTER` are forgotten (a
        file missing from one listing may be mid-compression)."""
        for f in list(self.by_number.values()):
            if f.seen == now:
                continue
            if (f.dev, f.ino) in listed:
                f.seen = now
                continue
            f.dev = f.ino = -1
            if now - f.seen > FORGET_AFTER:
                del self.by_number[f.number]
                alike = self._keyed[f.key]
                alike.remove(f)
                if not alike:
                    del self._keyed[f.key]


def inodes(paths: Iterable[str]) -> dict[tuple[int, int], str]:
    """The device and inode of each of ``paths`` that is there (a listing), with its path."""
    out: dict[tuple[int, int], str] = {}
    for path in paths:
        with contextlib.suppress(OSError):
            st = os.stat(path)
            out[(st.st_dev, st.st_ino)] = path
    return out


def _copying(
    f: SeenFile, fh: Any, st: os.stat_result, gz: bool, listed: dict[tuple[int, int], str]
) -> bool:
    """Is the plain backup open on ``fh`` (``st`` its ``fstat``) a copy, whole or part-written,
    of the plain file ``f`` while ``f`` is still there under its inode and not emptied (logrotate's
    ``copytruncate`` before its truncate): are its last bytes ``f``'s at the same offset?"""
    path = listed.get((f.dev, f.ino))
    if path is None or gz or f.gz:
        return False
    try:
        with open_log(path) as orig:
            ost = os.fstat(orig.fileno())
            if not f.is_at(orig, ost, orig.read(HEAD), path.endswith(".gz")):
                return False
            size = st.st_size
            at = max(0, size - TAIL)
            mine: bytes = os.pread(fh.fileno(), size - at, at)
            return size <= ost.st_size and mine == os.pread(orig.fileno(), size - at, at)
    except OSError:
        return False
