"""The files of a log set that the dashboard's index has seen, told apart from one refresh to the
next without being held open.

A file is known again as ``tail -f`` knows it (:class:`~flask_diaglog.readfile.Known`): by
device and inode, which a rename by rotation keeps, while it still holds what was read of it;
else, for a backup, by content: a compressed backup or a ``copytruncate`` copy holds the bytes
read last at the same offset. Two files that merely start with the same line are two files.

Files are not held open (a removed backup would keep its disk space), so an inode may name
another file by the next refresh: an inode is taken for the file only while the file's first
bytes (its *head*) and its kind (plain or ``.gz``) agree, and a file that is not in a listing is
known by content only from then on. Only the files that start with the same line are compared
by content (a copy does), and the current file never is: the new file that took its name after
a rotation may start with the same line as the one rotated away, and is a new file.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from typing import Any

from ..readfile import Known

__all__ = ["SeenFile", "SeenFiles"]

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


class SeenFiles:
    """The files seen so far, by number and by first line. Not thread-safe: the index calls it
    under its lock."""

    def __init__(self) -> None:
        self.by_number: dict[int, SeenFile] = {}
        self._keyed: dict[bytes, list[SeenFile]] = {}
        self._numbered = 0

    def find(
        self, fh: Any, st: os.stat_result, head: bytes, name: str, path: str, now: float
    ) -> SeenFile | None:
        """The file at ``path`` (of the set ``name``) found by the scan of ``now``, open on
        ``fh`` (``st`` its ``fstat``, ``head`` its first :data:`HEAD` bytes): one known by its
        inode, else (a backup) one known by its content that this scan has not found yet, else a
        new one. ``None`` while it holds no whole line."""
        gz = path.endswith(".gz")
        nl = head.find(b"\n")
        if nl < 0:
            return None
        key = head[: nl + 1]
        alike = self._keyed.setdefault(key, [])
        for f in alike:
            if f.name == name and f.same(st):
                # A .gz never changes; a plain file may have been emptied in place.
                if f.gz == gz and f.begins(head) and (gz or not f.emptied(fh, st.st_size)):
                    break
                f.dev = f.ino = -1  # another file's inode now: its lines are elsewhere, or gone
        else:
            copy = os.path.basename(path) != f"{name}.log"
            for f in alike:
                if copy and f.name == name and f.seen != now and f.begins(head):
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

    def scanned(self, now: float) -> None:
        """After the scan of ``now``: the files it did not find lose their inode (it may be
        another file's soon), and those not found for :data:`FORGET_AFTER` are forgotten (a
        file missing from one listing may be mid-compression)."""
        for f in list(self.by_number.values()):
            if f.seen == now:
                continue
            f.dev = f.ino = -1
            if now - f.seen > FORGET_AFTER:
                del self.by_number[f.number]
                alike = self._keyed[f.key]
                alike.remove(f)
                if not alike:
                    del self._keyed[f.key]
