"""The multi-process-safe rotating writer: one ``LogFile`` per file, for all threads and processes.

Durability: every record is rendered to bytes and handed to the kernel with one ``os.write`` on an
``O_APPEND`` descriptor before the logging call returns. There is no user-space buffer and no
queue, so a SIGKILL loses nothing that was logged, and appends from many processes never tear or
overwrite each other (the kernel serialises appends to one inode).

Rotation across processes. Each log file has a small sidecar ``.<name>.lock`` file, ``mmap``-ed by
every process, whose first word is a generation counter.

* Rotation takes an exclusive ``flock`` on the sidecar, re-checks that the path is still the inode
  this process saw over the limit (so two processes that both noticed the size never rotate
  twice), shifts the backups, renames the file to ``.1`` and bumps the generation.
* Before each write a process compares the generation with its own (a memory read, ~50 ns) and
  reopens the path when another process rotated. A write that raced with a rotation (generation
  checked just before it) lands in ``.1``: late lines move with their file, they are never lost.
* Threads share one descriptor per file and process, guarded by a lock, so a reopen never closes a
  descriptor another thread is about to write to.

Compression (``compress=True``) runs in a background thread, never on the request path, and has to
be sure nobody can still append to the backup it compresses (a line written after the gzip read
the file would vanish with the plain file). Every writer therefore holds a *shared* ``flock`` on
the descriptor it appends to, for as long as it keeps it open (one syscall per open, nothing per
write). The compressor takes an *exclusive* non-blocking ``flock`` on a backup: it succeeds only
when every process that had the file open has moved on to the new file, which each does at its
next write. A backup still held is retried later. The ``.gz`` is written to a hidden temporary
file, synced, and renamed into place; only then is the plain backup removed.

Fork: descriptors are dropped before ``fork()`` in the parent and in the child (both reopen at
their next write), because ``flock`` locks belong to the open file description, which a fork would
share between the two processes.

Failures (disk full, read-only file system, a removed directory) never reach the caller: the
record is counted as lost, the outage is reported once through ``on_error`` (stderr by default),
and every later write tries again, so lines written after recovery are there.

A full disk in particular:

* The sidecar's bytes are written for real (and ``posix_fallocate``-d, for a sidecar somebody
  left sparse) before it is mapped, and the mapping is read-only: its counters are written with
  ``pwrite`` under the exclusive ``flock``. A sparse page would be allocated by the first touch,
  and on a full disk that touch is a SIGBUS that kills the process; ``pwrite`` fails with ENOSPC.
* When the sidecar cannot be allocated (the disk was full when the process started), the writer
  works without the generation counter: before each write it ``stat``-s the path and reopens it
  when its inode changed (a rotation by another process), and it tries to map the sidecar again
  at most once a second.
* A record that fills the disk part-way is *torn*: its start is in the file, the kernel refused
  the rest. The writer keeps the rest and, in the sidecar, sets the *torn* word and bumps the
  generation, so every process reopens, and repairs, before its next write. The repair runs under
  the exclusive ``flock``: the writer that tore the record appends the rest when the file still
  ends with its start, so the record is whole after all; anybody else (or the owner, when the
  file has moved on) ends the fragment with :data:`TORN_MARK`, so the next record starts on a
  line of its own.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import mmap
import os
import re
import struct
import sys
import threading
import time
import weakref
from collections.abc import Callable

from ..lifecycle import at_exit, at_fork

__all__ = ["TORN_MARK", "ErrorHook", "LogFile"]

#: The sidecar ``.<name>.lock`` file: a few 64-bit words shared through ``mmap`` by every process
#: that writes the file set. Word 0 is the generation, bumped by every rotation and every torn
#: record; word 1 is non-zero while the current file may end in a torn record.
_SIDECAR_SIZE = 64
_WORDS = struct.Struct("=QQ")
_TORN_WORD = struct.Struct("=Q")
#: Ends the start of a record whose rest could not be written (disk full), so the next record
#: starts on a new line. Such a line is never taken for a whole record: it is not valid JSON, and
#: a plain one either does not split or its message visibly ends with the mark.
TORN_MARK = b" <diaglog: torn record, rest lost>\n"
#: The errors of a full disk or quota: the writer goes on without what it could not allocate.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
#: What follows ``<name>.`` in a backup's name: its number, then ``.gz`` if compressed.
_BACKUP_SUFFIX = re.compile(r"([1-9][0-9]*)(\.gz)?")
#: How often a writer without a sidecar mapping tries to map it again (seconds).
_SIDECAR_RETRY = 1.0
ErrorHook = Callable[["LogFile", "OSError | None"], None]
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
_SH_NB = fcntl.LOCK_SH | fcntl.LOCK_NB
_EX_NB = fcntl.LOCK_EX | fcntl.LOCK_NB
#: Stands in for the sidecar mapping while there is none (generation 0; ``_gen`` is then -1).
_NO_HDR = memoryview(bytearray(_SIDECAR_SIZE)).cast("Q")
#: Every open LogFile of this process, so descriptors and locks can be handled around fork().
_open_files: weakref.WeakSet[LogFile] = weakref.WeakSet()


class _ExitGuard:
    """Keeps interpreter shutdown from freezing a daemon compressor between its two final steps
    (``.gz`` renamed into place, plain backup removed), which would leave the lines twice."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.exiting = False

    def __enter__(self) -> None:
        self.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()

    def at_exit(self) -> None:
        with self.lock:
            self.exiting = True


_exit_guard = _ExitGuard()


class LogFile:
    """An append-only log file that many threads and processes can share and rotate safely.

    ``write(data)`` hands one whole record to the kernel with one ``os.write`` on an ``O_APPEND``
    descriptor before it returns. Failures (disk full, read-only file system, directory removed)
    never raise: they are counted in ``failed_writes``, reported through ``on_error`` once per
    outage (and once more when writing works again), and the next write tries again. A record the
    disk took only part of is completed, or its start marked with :data:`TORN_MARK`, before the
    next record is written (see the module docstring).

    The protocol that makes sharing safe (see the module docstring for why each step exists):

    * a writer holds a shared ``flock`` on the descriptor it writes to, for as long as it keeps
      that descriptor open;
    * before each write it compares the generation word in the mmap'd sidecar with the one it
      opened under (about 50 ns) and reopens the path when another process rotated;
    * rotation happens under an exclusive ``flock`` on the sidecar, only for the inode that was
      seen over the limit, and bumps the generation;
    * a backup is compressed only while the compressor holds an exclusive ``flock`` on it, which
      it gets only once no process has it open for writing any more. So a line that landed in a
      just-rotated file (a writer that checked the generation a moment before the rotation) is
      always inside the ``.gz``.
    """

    __slots__ = (
        "__weakref__",
        "_broken",
        "_budget",
        "_check_every",
        "_closed",
        "_compressor",
        "_fd",
        "_gen",
        "_hdr",
        "_ino",
        "_lock",
        "_mm",
        "_rest",
        "_side_fd",
        "_side_ino",
        "_side_retry",
        "_torn_end",
        "_torn_ino",
        "_wake",
        "backup_count",
        "compress",
        "compressed",
        "dir",
        "failed_writes",
        "lock_path",
        "max_bytes",
        "name",
        "on_error",
        "path",
    )

    def __init__(
        self,
        path: str,
        *,
        max_bytes: int = 0,
        backup_count: int = 0,
        compress: bool = False,
        on_error: ErrorHook | None = None,
    ) -> None:
        self.path = os.path.abspath(path)
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self.compress = compress
        self.on_error = on_error
        #: Records that could not be written (each is counted once).
        self.failed_writes = 0
        #: Backups compressed by this process.
        self.compressed = 0
        self.dir, self.name = os.path.split(self.path)
        self.lock_path = os.path.join(self.dir, f".{self.name}.lock")
        # How many bytes this process writes between size checks: small enough that N processes
        # overshoot max_bytes by little, large enough that the stat() stays off the hot path.
        self._check_every = max(512, min(max_bytes // 64, 64 * 1024)) if max_bytes else 1 << 20
        self._lock = threading.Lock()
        self._fd = -1
        self._ino = -1
        self._gen = -1
        #: Bytes left before the next size check; 0 while broken, so that the first write that
        #: succeeds again takes the slow path and reports the recovery.
        self._budget = self._check_every
        self._broken = False
        self._side_fd = -1
        self._side_ino = -1
        self._mm: mmap.mmap | None = None
        self._hdr = _NO_HDR
        self._side_retry = 0.0
        #: The part of a torn record the disk did not take, and where the file ended after its
        #: start (inode, size): the rest is appended only if the file still ends there.
        self._rest = b""
        self._torn_ino = -1
        self._torn_end = -1
        self._compressor: threading.Thread | None = None
        self._wake = threading.Event()
        self._closed = False
        with self._lock:
            # Raises OSError at startup if the directory is unusable. A full disk is not a bad
            # directory: the writer starts without the sidecar and without the file, and its
            # writes fail (counted, reported) until there is space again.
            try:
                self._open_sidecar()
            except OSError as exc:
                if exc.errno not in _NO_SPACE:
                    raise
                self._side_retry = time.monotonic() + _SIDECAR_RETRY
            # Create the file now (so a bad directory fails at startup), but keep no descriptor
            # until the first write: a process that never writes (a pre-forking master) then holds
            # no file open that a compressor would have to wait for.
            try:
                os.close(os.open(self.path, _OPEN_FLAGS, 0o644))
            except OSError as exc:
                if exc.errno not in _NO_SPACE:
                    raise
        at_exit(_exit_guard.at_exit)  # with the first LogFile, not at import
        at_fork(before=_before_fork, after_in_child=_after_fork_child)
        _open_files.add(self)

    # -- opening ----------------------------------------------------------------------------

    def _open_sidecar(self) -> None:
        """Map the sidecar (read-only), its page allocated for real first.

        Never ``ftruncate``: a sparse page is allocated by the first touch of the mapping, and on
        a full disk that is a SIGBUS. Raises OSError (ENOSPC on a full disk) instead.
        """
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            # One initialiser at a time, and never while a rotation bumps the generation: the
            # zeros go only where the file has no bytes yet.
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                st = os.fstat(fd)
                if st.st_size < _SIDECAR_SIZE:
                    _pwrite_all(fd, bytes(_SIDECAR_SIZE - st.st_size), st.st_size)
                    os.fsync(fd)
                if hasattr(os, "posix_fallocate"):
                    try:  # a sidecar left sparse (an older version, a crash): allocate it
                        os.posix_fallocate(fd, 0, _SIDECAR_SIZE)
                    except OSError as exc:
                        if exc.errno in _NO_SPACE:
                            raise
                        # not supported by this file system: the bytes above are real anyway
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            mm = mmap.mmap(fd, _SIDECAR_SIZE, access=mmap.ACCESS_READ)
        except BaseException:
            os.close(fd)
            raise
        self._release_sidecar()
        self._side_fd = fd
        self._side_ino = st.st_ino
        self._mm = mm
        self._hdr = memoryview(mm).cast("Q")

    def _release_sidecar(self) -> None:
        if self._hdr is not _NO_HDR:
            self._hdr.release()
            self._hdr = _NO_HDR
            self._gen = -1
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        if self._side_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._side_fd)
            self._side_fd = -1

    def _try_sidecar(self) -> None:
        """Map the sidecar if it can be (at most once a second); else go on without it."""
        now = time.monotonic()
        if now < self._side_retry:
            return
        try:
            self._open_sidecar()
        except OSError:
            self._side_retry = now + _SIDECAR_RETRY

    def _sidecar_fd(self) -> int:
        """The descriptor the rotation lock is taken on (reopened after a fork; the mapping is
        inherited and stays)."""
        if self._side_fd < 0:
            self._side_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        return self._side_fd

    def _set_words(self, side: int, *, bump: bool, torn: int | None = None) -> None:
        """Under the caller's exclusive ``flock`` on ``side``: bump the generation (every process
        reopens at its next write) and/or set the torn word. With ``pwrite``, never through the
        mapping, so a file system that finds no space fails here instead of with a SIGBUS. A
        sidecar that was never allocated is left alone: nobody maps it, writers follow by stat.
        """
        with contextlib.suppress(OSError):
            raw = os.pread(side, _WORDS.size, 0)
            if len(raw) < _WORDS.size:
                return
            gen, flag = _WORDS.unpack(raw)
            if torn is not None and not bump:
                if flag != torn:
                    _pwrite_all(side, _TORN_WORD.pack(torn), _TORN_WORD.size)
                return
            _pwrite_all(side, _WORDS.pack(gen + 1, flag if torn is None else torn), 0)

    def _open(self, *, rotating: bool = False) -> None:
        """Open the current file for appending and take the writer's shared lock on it.

        Then, if the file may end in a torn record, repair it (see :meth:`_repair`).
        ``rotating``: called by :meth:`_rotate`, which holds the sidecar's exclusive lock.
        """
        if self._hdr is _NO_HDR and not rotating:
            self._try_sidecar()
        hdr = self._hdr
        self._close_fd()
        for _ in range(100):
            gen = hdr[0]
            try:
                fd = os.open(self.path, _OPEN_FLAGS, 0o644)
            except FileNotFoundError:
                os.makedirs(self.dir, exist_ok=True)  # the directory was removed: recreate it
                fd = os.open(self.path, _OPEN_FLAGS, 0o644)
            try:
                # Fails only while a compressor holds this inode, i.e. it was rotated after our
                # open() found it: open the path again.
                try:
                    fcntl.flock(fd, _SH_NB)
                except BlockingIOError:
                    raise
                except OSError:
                    pass  # no flock here (some network file systems): write without the lock
                if hdr[0] == gen:
                    ino = os.fstat(fd).st_ino
                    break
            except BlockingIOError:
                pass
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # rotated while we opened it: take the new one
        else:
            raise OSError(errno.EAGAIN, "log file keeps being rotated while opening it", self.path)
        self._fd = fd
        self._ino = ino
        # Without a mapping the generation is always 0: -1 sends every write through _follow.
        self._gen = gen if hdr is not _NO_HDR else -1
        self._budget = 0 if self._broken else self._check_every
        if self._rest or hdr[1]:
            self._repair(fd, rotating)

    def _follow(self) -> None:
        """The slow path before a write: open the file (first write, after a failure or a fork),
        reopen it after another process rotated. Without a sidecar mapping there is no
        generation to compare: reopen when the path is another inode than ours."""
        if self._hdr is _NO_HDR and self._fd >= 0:
            self._try_sidecar()
            if self._hdr is _NO_HDR:
                try:
                    ino = os.stat(self.path).st_ino
                except FileNotFoundError:
                    ino = -1
                if ino == self._ino:
                    return
        self._open()

    def _repair(self, fd: int, locked: bool) -> None:
        """Before writing to a file that may end in a torn record, make its tail a line end.

        If this writer tore a record and the file still ends where its start ended, the rest is
        appended: the record is whole after all. Otherwise a tail that is not a line end gets
        :data:`TORN_MARK`. Under the sidecar's exclusive lock, so one writer repairs at a time;
        ``locked``: the caller holds it already.
        """
        side = -1
        if not locked:
            with contextlib.suppress(OSError):
                side = self._sidecar_fd()
                fcntl.flock(side, fcntl.LOCK_EX)
        elif self._side_fd >= 0:
            side = self._side_fd
        try:
            st = os.fstat(fd)
            rest = self._rest
            whole = False
            if rest:
                if st.st_ino == self._torn_ino and st.st_size == self._torn_end:
                    written = 0
                    try:
                        while written < len(rest):
                            written += _write_some(fd, rest[written:])
                    finally:
                        self._rest = rest[written:]
                        self._torn_end += written
                    whole = True
                else:
                    # Marked by another writer, or the file moved on (rotated, replaced).
                    self._rest = b""
                    self.failed_writes += 1
            if not whole and st.st_size > 0 and self._tail(st) != b"\n":
                _write_all(fd, TORN_MARK)
            if side >= 0 and self._hdr[1]:
                self._set_words(side, bump=False, torn=0)
        finally:
            if side >= 0 and not locked:
                with contextlib.suppress(OSError):
                    fcntl.flock(side, fcntl.LOCK_UN)

    def _tail(self, st: os.stat_result) -> bytes:
        """The last byte of the file ``st`` describes (the writer's own descriptor is write-only);
        a line end when it cannot be read."""
        try:
            rfd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return b"\n"
        try:
            if os.fstat(rfd).st_ino != st.st_ino:
                return b"\n"
            return os.pread(rfd, 1, st.st_size - 1) or b"\n"
        except OSError:
            return b"\n"
        finally:
            os.close(rfd)

    def _close_fd(self) -> None:
        self._gen = -1  # never equal to the sidecar's generation: the next write reopens
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)  # also drops our shared lock on that inode

    # -- writing ----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Append one record (one ``write(2)``). Never raises for I/O errors."""
        # acquire()/release() rather than ``with``: about 1.1 k instructions less per record
        # (measured under callgrind; ``with`` looks up and calls __enter__ and __exit__).
        lock = self._lock
        lock.acquire()
        try:
            try:
                if self._hdr[0] != self._gen:
                    # Another process rotated or tore a record, we are not open yet (closed,
                    # forked, failed), or there is no sidecar mapping (see _follow).
                    if self._closed:
                        self.failed_writes += 1
                        return
                    self._follow()
                n = os.write(self._fd, data)
            except OSError as exc:
                self._failed(exc)
                return
            if n != len(data):
                torn = self._write_rest(data, n)
                if torn is not None:
                    self._failed(torn, lost=False)  # not lost yet: the rest waits in _rest
                    return
                n = len(data)
            budget = self._budget - n
            if budget > 0:  # one test for "no size check due, not broken" (see _budget)
                self._budget = budget
                return
            if self._broken:
                self._broken = False
                self._report(None)
            self._budget = self._check_every
            try:
                self._check()
            except OSError as exc:  # the record is written; the next write reopens
                self._failed(exc, lost=False)
        finally:
            lock.release()

    def _write_rest(self, data: bytes, n: int) -> OSError | None:
        """A short write: write the rest. When the disk refuses it, the record is torn: keep the
        rest and tell every writer (sidecar torn word, generation bumped) to repair first."""
        view = memoryview(data)[n:]
        while view:
            try:
                view = view[_write_some(self._fd, view) :]
            except OSError as exc:
                self._tore(bytes(view))
                return exc
        return None

    def _tore(self, rest: bytes) -> None:
        self._rest = rest
        try:
            st = os.fstat(self._fd)
            self._torn_ino, self._torn_end = st.st_ino, st.st_size
        except OSError:
            self._torn_ino = self._torn_end = -1  # cannot be completed: the repair marks it
        with contextlib.suppress(OSError):
            side = self._sidecar_fd()
            fcntl.flock(side, fcntl.LOCK_EX)
            try:
                self._set_words(side, bump=True, torn=1)
            finally:
                fcntl.flock(side, fcntl.LOCK_UN)

    def _failed(self, exc: OSError, lost: bool = True) -> None:
        if lost:
            self.failed_writes += 1
        self._close_fd()  # reopen on the next write (the file may be gone, or the fd broken)
        if not self._broken:
            self._broken = True
            self._budget = 0
            self._report(exc)

    def _report(self, exc: OSError | None) -> None:
        hook = self.on_error
        if hook is None:
            with contextlib.suppress(Exception):
                if exc is not None:
                    sys.stderr.write(
                        f"flask-diaglog: cannot write {self.path} ({exc}); lines are counted "
                        "as lost until it can be written again\n"
                    )
                else:
                    sys.stderr.write(
                        f"flask-diaglog: {self.path} is writable again "
                        f"({self.failed_writes} lines lost so far)\n"
                    )
            return
        with contextlib.suppress(Exception):
            hook(self, exc)

    def _check(self) -> None:
        """Every ``_check_every`` bytes: follow external moves, rotate when over the limit."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._open()  # removed from under us (rm, logrotate): start a new file
            return
        if st.st_ino != self._ino:
            self._open()  # replaced by somebody who does not use our protocol
            return
        try:
            side_ino = os.stat(self.lock_path).st_ino
        except OSError:
            side_ino = self._side_ino
        if side_ino != self._side_ino:
            # The sidecar was removed (share the new one), or we have none mapped yet.
            with contextlib.suppress(OSError):
                self._open_sidecar()
            self._open()
            return
        if self.max_bytes and st.st_size >= self.max_bytes:
            self._rotate()

    # -- rotation ---------------------------------------------------------------------------

    def _name(self, i: int, gz: bool = False) -> str:
        return f"{self.path}.{i}.gz" if gz else f"{self.path}.{i}"

    def _rotate(self) -> None:
        side = self._sidecar_fd()
        fcntl.flock(side, fcntl.LOCK_EX)
        try:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                st = None
            # Only rotate the file we saw grow past the limit, and only if nobody did already.
            if st is not None and st.st_ino == self._ino and st.st_size >= self.max_bytes:
                n = self.backup_count
                if n > 0:
                    self._shift(n)
                    os.rename(self.path, self._name(1))
                else:
                    os.unlink(self.path)
                self._set_words(side, bump=True)
            self._open(rotating=True)
        finally:
            fcntl.flock(side, fcntl.LOCK_UN)
        if self.compress and self.backup_count > 0:
            self._start_compressor()

    def _shift(self, n: int) -> None:
        """``.i`` becomes ``.i+1`` (plain and ``.gz``); what would become ``.n+1`` is deleted.

        Only the backups present are looked at, highest first: the work grows with the files
        there are, not with ``backup_count``.
        """
        prefix = self.name + "."
        present: list[tuple[int, bool]] = []
        for entry in os.listdir(self.dir):
            if entry.startswith(prefix):
                m = _BACKUP_SUFFIX.fullmatch(entry, len(prefix))
                if m is not None:
                    present.append((int(m.group(1)), m.group(2) is not None))
        for i, gz in sorted(present, reverse=True):
            if i >= n:  # would become .n+1 (or beyond: backup_count was lowered)
                if i == n:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._name(i, gz))
                continue
            with contextlib.suppress(FileNotFoundError):
                os.rename(self._name(i, gz), self._name(i + 1, gz))

    # -- compression (off the request path) -------------------------------------------------

    def _start_compressor(self) -> None:
        self._wake.set()
        t = self._compressor
        if t is None or not t.is_alive():
            t = threading.Thread(target=self._compress_loop, name="diaglog-gzip", daemon=True)
            self._compressor = t
            t.start()

    def _compress_loop(self) -> None:
        delay = 0.05
        give_up = time.monotonic() + 3600.0
        failing = False  # said once per streak of failures (a full disk fails every retry)
        while not self._closed and not _exit_guard.exiting:
            self._wake.clear()
            try:
                busy = self.compress_backups()
                failing = False
            except Exception as exc:  # never let the thread die silently with work left
                if not failing:
                    failing = True
                    with contextlib.suppress(Exception):
                        sys.stderr.write(
                            f"flask-diaglog: compressing {self.path} backups: {exc} "
                            "(retrying; said once until it works)\n"
                        )
                busy = True
            if not busy or time.monotonic() > give_up:
                if not self._wake.wait(30.0):
                    return  # idle: the next rotation starts a new thread
                delay = 0.05
                give_up = time.monotonic() + 3600.0
                continue
            # Some backup is still open in a process that has not written since the rotation;
            # it drops the file at its next write. Try again, a little later each time.
            self._wake.wait(delay)
            delay = min(delay * 2, 5.0)

    def compress_backups(self) -> bool:
        """Gzip every plain backup that no process still writes to. True if some were busy.

        A ``.gz`` appears only when complete: it is written to a hidden temporary file, synced,
        and renamed. The plain backup is removed after that, so a crash at any point leaves the
        plain backup or a complete ``.gz`` (or briefly both), never a partial one. Safe to run in
        several processes at once.
        """
        busy = False
        done: set[int] = set()
        # A descriptor of our own for the rotation lock: flock() locks belong to the open file
        # description, so sharing the writers' descriptor would not exclude our own threads.
        side = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            while True:
                fd, ino, was_busy = self._pick_backup(side, done)
                busy = busy or was_busy
                if fd < 0:
                    return busy
                done.add(ino)
                try:
                    self._compress_fd(side, fd, ino)
                finally:
                    os.close(fd)  # releases the exclusive lock
        finally:
            os.close(side)

    def _pick_backup(self, side: int, done: set[int]) -> tuple[int, int, bool]:
        """Open and exclusively lock one plain backup nobody writes to: ``(fd, inode, busy)``."""
        busy = False
        fcntl.flock(side, fcntl.LOCK_EX)  # no rotation renames files while we look
        try:
            for i in range(1, self.backup_count + 1):
                try:
                    fd = os.open(self._name(i), os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                ino = os.fstat(fd).st_ino
                if ino in done:
                    os.close(fd)
                    continue
                try:
                    fcntl.flock(fd, _EX_NB)
                except BlockingIOError:
                    os.close(fd)
                    busy = True  # a writer still has it open: next round
                    continue
                return fd, ino, busy
        finally:
            fcntl.flock(side, fcntl.LOCK_UN)
        return -1, -1, busy

    def _compress_fd(self, side: int, fd: int, ino: int) -> None:
        self._remove_stale_parts()
        tmp = os.path.join(self.dir, f".{self.name}.{ino}.{os.getpid()}.gz.part")
        try:
            with open(tmp, "wb") as raw:
                with gzip.GzipFile(filename=self.name, mode="wb", fileobj=raw, mtime=0) as gz:
                    while True:
                        chunk = os.read(fd, 1 << 20)
                        if not chunk:
                            break
                        gz.write(chunk)
                raw.flush()
                os.fsync(raw.fileno())
            fcntl.flock(side, fcntl.LOCK_EX)
            try:
                # The backup may have moved to a higher number meanwhile: find it by inode.
                for i in range(1, self.backup_count + 1):
                    plain = self._name(i)
                    try:
                        if os.stat(plain).st_ino != ino:
                            continue
                    except FileNotFoundError:
                        continue
                    with _exit_guard:
                        if _exit_guard.exiting:
                            break  # interpreter shutdown: leave the plain backup for later
                        os.rename(tmp, self._name(i, gz=True))
                        os.unlink(plain)
                    self.compressed += 1
                    return
            finally:
                fcntl.flock(side, fcntl.LOCK_UN)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # the backup fell off the end of the retention meanwhile

    def _remove_stale_parts(self) -> None:
        """Delete temporary ``.gz.part`` files left by compressors that were killed."""
        prefix = f".{self.name}."
        for entry in os.listdir(self.dir):
            if not (entry.startswith(prefix) and entry.endswith(".gz.part")):
                continue
            try:
                pid = int(entry[len(prefix) : -len(".gz.part")].rsplit(".", 1)[1])
            except (IndexError, ValueError):
                continue
            if pid == os.getpid():
                continue
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.dir, entry))
            except PermissionError:
                pass

    def wait_compressed(self, timeout: float = 10.0) -> bool:
        """Block until no plain backup is left to compress (tests, clean shutdown).

        Returns False on timeout, e.g. while another process still has a backup open.
        """
        if not self.compress or self.backup_count <= 0:
            return True
        deadline = time.monotonic() + timeout
        while True:
            t = self._compressor
            if t is not None and t.is_alive():
                self._wake.set()
            try:
                if not any(os.path.exists(self._name(i)) for i in range(1, self.backup_count + 1)):
                    return True
            except OSError:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Release the descriptors. Later writes are counted as failed, never raised."""
        with self._lock:
            self._closed = True
            self._wake.set()
            if self._rest:  # a torn record that was never completed
                self._rest = b""
                self.failed_writes += 1
            self._close_fd()
            self._release_sidecar()
        _open_files.discard(self)

    def __del__(self) -> None:
        # A LogFile dropped without close(): give its descriptors back (the mapping goes by itself).
        with contextlib.suppress(Exception):
            for fd in (self._fd, self._side_fd):
                if fd >= 0:
                    os.close(fd)

    def _before_fork(self) -> None:
        # The parent drops its descriptor (reopened at its next write): a pre-forking master that
        # logged once must not keep a backup open forever, and the child must not share the open
        # file description (flock locks belong to it, not to the process).
        if self._lock.acquire(timeout=1.0):
            try:
                self._close_fd()
            finally:
                self._lock.release()

    def _after_fork_child(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._compressor = None
        self._rest = b""  # the parent's torn record is the parent's to complete
        self._close_fd()
        # The rotation lock must be our own open file description too; the mapping stays.
        side, self._side_fd = self._side_fd, -1
        if side >= 0:
            with contextlib.suppress(OSError):
                os.close(side)

    def __repr__(self) -> str:
        return f"<LogFile {self.path}>"


def _write_some(fd: int, data: bytes | memoryview) -> int:
    """``os.write`` that treats writing nothing as the disk being full."""
    n = os.write(fd, data)
    if n <= 0 and len(data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return n


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[_write_some(fd, view) :]


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view, offset = view[n:], offset + n


def _before_fork() -> None:
    for f in list(_open_files):
        f._before_fork()


def _after_fork_child() -> None:
    _exit_guard.lock = threading.Lock()
    for f in list(_open_files):
        f._after_fork_child()
