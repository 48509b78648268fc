"""Opening diaglog's files for reading back, whatever else a log directory holds: one place for
the CLI, ``tail -f``, the dashboard's index and the in-flight state files of other workers.

Only regular files are read. A name that is a FIFO, a device (``jobs.log -> /dev/zero``), a
directory, a dangling symlink or a symlink loop is refused with :class:`NotRegular` (an
:class:`OSError`), like a file that cannot be opened: the open never blocks (``O_NONBLOCK``;
a FIFO without a writer would wait forever) and the type is checked on the open descriptor,
so a name swapped between a listing and the open is caught too.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

__all__ = ["NotRegular", "open_regular", "reason"]


class NotRegular(OSError):
    """The name is there but is not a regular file (a FIFO, a device, a directory)."""


def open_regular(path: str) -> BinaryIO:
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


def reason(exc: OSError) -> str:
    """Why a file could not be read, in a few words (``not a regular file``, ``No such file or
    directory``, ``Too many levels of symbolic links``)."""
    if isinstance(exc, NotRegular):
        return "not a regular file"
    return exc.strerror or type(exc).__name__
