"""Log files: the routed set of files an app writes (``requests``, ``jobs``, ``errors``).

:mod:`.writer` holds the multi-process-safe rotating ``LogFile``, :mod:`.render` the two line
layouts, :mod:`.console` the non-blocking console echo. This module routes rendered lines to
files by the rules of :mod:`flask_diaglog.trail`.
"""

from __future__ import annotations

import os

from ..trail import FILES, file_name
from .writer import ErrorHook, LogFile

__all__ = ["FileSet", "LogFile", "SingleFile"]


class FileSet:
    """``requests.log``, ``jobs.log`` and ``errors.log`` in one directory: the file of each
    target, and the one that also takes ERROR and above (the recorder writes by this routing)."""

    def __init__(
        self,
        log_dir: str,
        *,
        max_bytes: int = 0,
        backup_count: int = 0,
        compress: bool = False,
        on_error: ErrorHook | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.files: dict[str, LogFile] = {
            name: LogFile(
                os.path.join(log_dir, file_name(name)),
                max_bytes=max_bytes,
                backup_count=backup_count,
                compress=compress,
                on_error=on_error,
            )
            for name in FILES
        }
        #: The file of each target; ERROR and above also go to :attr:`errors`.
        self.targets: dict[str, LogFile] = {
            "requests": self.files["requests"],
            "jobs": self.files["jobs"],
        }
        self.errors: LogFile | None = self.files["errors"]

    @property
    def failed_writes(self) -> int:
        """Lines that could not be written, over all files."""
        return sum(f.failed_writes for f in self.files.values())

    def close(self) -> None:
        for f in self.files.values():
            f.close()


class SingleFile:
    """One file that takes every line, whatever its target (the standalone ``DiagLogHandler``)."""

    def __init__(self, file: LogFile) -> None:
        self.file = file
        self.targets: dict[str, LogFile] = {"requests": file, "jobs": file}
        self.errors: LogFile | None = None

    @property
    def failed_writes(self) -> int:
        return self.file.failed_writes

    def close(self) -> None:
        self.file.close()
