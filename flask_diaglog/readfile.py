"""Opening diaglog's files for reading back, whatever else a log directory holds: one place for
the CLI, ``tail -f``, the dashboard's index and the in-flight state files of other workers.

Only regular files are read. A name that is a FIFO, a device (``jobs.log -> /dev/zero``), a
directory, a dangling symlink or a symlink loop is refused with :class:`NotRegular` (an
:class:`OSError`), like a file that cannot be opened: the open never blocks (``O_NONBLOCK``;
a FIFO without a writer would wait forever) and the type is checked on the open descriptor,
so a name swapped between a listing and the open is caught too.

Lines are read in blocks by :func:`read_lines`, never whole: a line longer than
:data:`MAX_LINE` (a file of 400 MiB without a line feed) is skipped without being held, and
empty lines (a file of nothing but line feeds) cost next to nothing.

**Knowing a file again** (:class:`Known`), the one way ``tail -f`` and the dashboard's index
tell files apart across rotations: by device and inode while the file keeps them (a rename by
rotation does), and by content once it is a new file with the same bytes (a compressed backup, a
``copytruncate`` copy): it holds the bytes read last, up to :data:`TAIL`, at the same offset.
So only two files alike in those bytes, millisecond timestamps included, could be taken for
each other; two files that merely start with the same line are not.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Protocol

__all__ = [
    "MAX_LINE", "TAIL", "Known", "NotRegular", "Readable", "ident", "open_log", "open_regular",
    "read_lines", "reason",
]  # fmt: skip

#: The longest line a reader takes, line feed included. diaglog's lines are far shorter: each
#: text value is cut at 64 KiB before it is escaped (see :mod:`~flask_diaglog.redact`); only a
#: ``request_error`` line carrying a large JSON body the view had read can be longer.
MAX_LINE = 1 << 20
#: Bytes read at a time: a scan holds a block and the lines split from it. Small enough that
#: a damaged ``.gz`` gives its lines up to about 8 KiB before the damage.
_BLOCK = 8 << 10
#: Two or more line feeds: the empty lines between them are dropped in one step.
_BLANKS = re.compile(rb"\n\n+")
#: The last bytes read of a file that tell it from the others (they hold millisecond
#: timestamps): see :class:`Known`.
TAIL = 4096


class NotRegular(OSError):
    """The name is there but is not a regular file (a FIFO, a device, a directory)."""


def open_regular(path: str) -> IO[bytes]:
    """``path`` opened for reading in binary mode, when it is a regular file; else
    :class:`OSError` (:class:`NotRegular` for another kind of file). Never blocks."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegular(f"{path} is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def open_log(path: str) -> Iterator[Any]:
    """A log file or backup opened as :func:`open_regular` opens it, a ``.gz`` decompressed."""
    with open_regular(path) as raw:
        if not path.endswith(".gz"):
            yield raw
            return
        with gzip.GzipFile(fileobj=raw) as fh:
            yield fh


def reason(exc: OSError) -> str:
    """Why a file could not be read, in a few words (``not a regular file``, ``No such file or
    directory``, ``Too many levels of symbolic links``)."""
    if isinstance(exc, NotRegular):
        return "not a regular file"
    return exc.strerror or type(exc).__name__


class Readable(Protocol):
    """A binary file: plain or gzipped."""

    def read(self, size: int = -1, /) -> bytes: ...


def read_lines(fh: Readable, skipping: bool = False) -> Iterator[bytes | None]:
    """The lines of ``fh`` from where it is, without their line feeds (the last one may have
    none); ``None`` for each line over :data:`MAX_LINE`, which is skipped; empty lines left
    out. Reads 8 KiB at a time, holding at most one line and one block. ``skipping``: ``fh``
    is inside a line over the limit (already counted), dropped up to its line feed."""
    rest = b""
    # read1: one read of the file below, so the lines before a damaged .gz's damage come out
    # before the error does (read() would drop the block it was filling).
    read = getattr(fh, "read1", fh.read)
    while block := read(_BLOCK):
        if skipping:
            nl = block.find(b"\n")
            if nl < 0:
                continue
            block, skipping = block[nl + 1 :], False
        if b"\n\n" in block:
            block = _BLANKS.sub(b"\n", block)
        lines = (rest + block).split(b"\n") if rest else block.split(b"\n")
        rest = lines.pop()
        for line in lines:
            if len(line) >= MAX_LINE:
                yield None
            elif line:
                yield line
        if len(rest) >= MAX_LINE:
            yield None
            rest, skipping = b"", True
    if rest:
        yield rest


def ident(fh: Any) -> tuple[int, int]:
    """The device and inode of an open file (a ``.gz`` opened by :func:`open_log`: its own)."""
    st = os.fstat(fh.fileno())
    return st.st_dev, st.st_ino


@dataclass(eq=False)
class Known:
    """A file a reader has read into, and how it knows it again: ``dev`` and ``ino`` while it
    is that file, and ``tail``, the bytes (up to :data:`TAIL`) it holds at offset ``at``, which
    a copy of it holds at the same offset. A mark without a tail (nothing read yet) knows the
    file by its inode only."""

    dev: int
    ino: int
    at: int = 0
    tail: bytes = b""

    def same(self, st: os.stat_result) -> bool:
        """Is ``st`` (a ``stat``) this file's device and inode?"""
        return st.st_ino == self.ino and st.st_dev == self.dev

    def holds(self, fh: Any) -> bool:
        """Does the open file ``fh`` (plain or gzipped) hold the tail at its offset: is it this
        file, or a copy of it? Raises what reading a damaged ``.gz`` raises."""
        if not self.tail:
            return False
        fh.seek(self.at)
        return bool(fh.read(len(self.tail)) == self.tail)

    def is_in(self, fh: Any, st: os.stat_result) -> bool:
        """Is the open file ``fh`` (``st`` its ``fstat``) this file, or a copy of it?"""
        return self.same(st) or self.holds(fh)

    def emptied(self, fh: IO[bytes], size: int) -> bool:
        """Was the plain file ``fh``, this file by its inode, emptied in place since the tail
        was taken (logrotate's ``copytruncate``): is it shorter than the tail's end, or no
        longer holding it? ``size``: its size now."""
        end = self.at + len(self.tail)
        if size < end:
            return True
        return bool(self.tail) and os.pread(fh.fileno(), len(self.tail), self.at) != self.tail

    def mark(self, fh: IO[bytes], pos: int | None = None) -> None:
        """Take the tail: the bytes of the plain file ``fh`` before ``pos`` (its end when
        ``None``), up to :data:`TAIL` of them."""
        if pos is None:
            pos = os.fstat(fh.fileno()).st_size
        self.at = max(0, pos - TAIL)
        self.tail = os.pread(fh.fileno(), pos - self.at, self.at)
