"""The log writer on its own: write failures, retention, compression, threads, fork, dictConfig."""

from __future__ import annotations

import errno
import gzip
import json
import logging
import logging.config
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, abort
from test_multiprocess import read_set

from flask_diaglog import DiagLogHandler, stats
from flask_diaglog.files import writer as writer_mod
from flask_diaglog.files.render import plain_line
from flask_diaglog.files.writer import LogFile

# -- write failures ------------------------------------------------------------------------------


class _FailingOs:
    """Stands in for the ``os`` module inside the writer: ``write`` fails while ``failing`` is set
    (disk full, I/O error), and for a read-only file system, so does opening for writing."""

    def __init__(self, code: int) -> None:
        self.failing = True
        self.code = code

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        if self.failing:
            raise OSError(self.code, os.strerror(self.code))
        return os.write(fd, data)

    def open(self, path: str, flags: int, mode: int = 0o777) -> int:
        if self.failing and self.code == errno.EROFS and flags & os.O_WRONLY:
            raise OSError(self.code, os.strerror(self.code), path)
        return os.open(path, flags, mode)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EIO], ids=errno.errorcode.get)
def test_injected_write_errors_never_fail_requests(
    code: int,
    make_app: Callable[..., Flask],
    logs: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With every write failing, requests keep their status; failures are counted and reported
    once; after recovery the new lines are in the file."""
    app = make_app({"PROPAGATE_EXCEPTIONS": False})

    @app.get("/ok")
    def ok() -> dict[str, bool]:
        logging.getLogger(app.import_name).info("view ran")
        return {"ok": True}

    @app.get("/teapot")
    def teapot() -> tuple[str, int]:
        return "short and stout", 418

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("kaput")

    @app.get("/gone")
    def gone() -> str:
        abort(410)

    client = app.test_client()
    assert client.get("/ok", headers={"X-Request-ID": "before"}).status_code == 200
    fake = _FailingOs(code)
    monkeypatch.setattr(writer_mod, "os", fake)
    expected = {"/ok": 200, "/teapot": 418, "/boom": 500, "/gone": 410, "/missing": 404}
    for i in range(20):
        for path, status in expected.items():
            resp = client.get(path, headers={"X-Request-ID": f"during{i}"})
            assert resp.status_code == status
            assert resp.headers["X-Request-ID"] == f"during{i}"
    lost = stats(app)["failed_writes"]
    assert lost >= 20 * 5 * 2
    err = capsys.readouterr().err
    assert err.count("requests.log failed") == 1, err
    assert err.count("errors.log failed") == 1, err

    fake.failing = False
    assert client.get("/ok", headers={"X-Request-ID": "after"}).status_code == 200
    assert client.get("/boom", headers={"X-Request-ID": "after2"}).status_code == 500
    text = logs.text("requests")
    assert "req=before job=- | request_end" in text
    assert "req=during" not in text
    assert "req=after job=- | request_start" in text
    assert "req=after job=- | view ran" in text
    assert "req=after job=- | request_end" in text
    assert "req=after2 job=- | request_error" in logs.text("errors")
    err = capsys.readouterr().err
    assert "requests.log is writable again" in err
    assert stats(app)["failed_writes"] == lost


def test_real_enospc_from_the_kernel(tmp_path: Path) -> None:
    """A log path pointing at /dev/full gets real ENOSPC: counted, reported once, then recovers."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    path = tmp_path / "full.log"
    path.symlink_to("/dev/full")
    reports: list[OSError | None] = []
    lf = LogFile(str(path), on_error=lambda f, exc: reports.append(exc))
    for n in range(50):
        lf.write(f"lost {n}\n".encode())
    assert lf.failed_writes == 50
    assert len(reports) == 1
    assert reports[0] is not None and reports[0].errno == errno.ENOSPC
    path.unlink()  # space again: the next write reopens the path and creates a regular file
    lf.write(b"back\n")
    assert reports[1:] == [None]
    assert path.read_text() == "back\n"
    lf.close()


def test_removed_log_directory_is_recreated(tmp_path: Path) -> None:
    """rm -rf of the log directory: the next size check starts a new file, nothing raises."""
    d = tmp_path / "gone"
    d.mkdir()
    lf = LogFile(str(d / "a.log"), max_bytes=1024, backup_count=2)
    lf.write(b"first\n")
    for p in d.iterdir():
        p.unlink()
    d.rmdir()
    for n in range(2000):  # the size check (every 512 bytes here) notices and reopens
        lf.write(f"line {n}\n".encode())
    assert lf.failed_writes == 0
    assert "line 1999" in "".join(read_set(d / "a.log"))
    lf.close()


# -- rotation, retention, compression -----------------------------------------------------------


def test_threads_rotating_lose_nothing(tmp_path: Path) -> None:
    """8 threads sharing one LogFile while it rotates every 8 KiB: every line once."""
    lf = LogFile(str(tmp_path / "t.log"), max_bytes=8 * 1024, backup_count=1000)

    def worker(t: int) -> None:
        for n in range(3000):
            lf.write(f"t{t} n{n}\n".encode())

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    lines = read_set(tmp_path / "t.log")
    assert sorted(lines) == sorted(f"t{t} n{n}" for t in range(8) for n in range(3000))
    lf.close()


def test_a_huge_backup_count_keeps_rotation_to_the_files_present(tmp_path: Path) -> None:
    """``backup_count`` bounds what is kept, not the work of a rotation: with a billion allowed,
    rotations still shift the few backups there are, newest first (a rotation used to visit every
    number up to the count, seconds per rotation under the exclusive lock)."""
    lf = LogFile(str(tmp_path / "big.log"), max_bytes=100, backup_count=10**9)
    for n in range(12):  # each past the size checked between two checks (512 bytes at least)
        lf.write(f"{n:03d} {'x' * 600}\n".encode())
    lf.close()
    backups = sorted(
        (int(p.name.rsplit(".", 1)[1]), p.read_text()[:3])
        for p in tmp_path.glob("big.log.*")
        if p.name.rsplit(".", 1)[1].isdigit()
    )
    assert [i for i, _ in backups] == list(range(1, len(backups) + 1)), backups
    assert len(backups) == 12
    firsts = [int(first) for _, first in backups]
    assert firsts == sorted(firsts, reverse=True), "backup .1 must hold the newest lines"


def test_lowering_backup_count_drops_the_backup_past_it(tmp_path: Path) -> None:
    """A file rotated with a higher count before: the next rotation deletes what would pass the
    new count and leaves higher numbers alone, as before."""
    path = tmp_path / "low.log"
    for i in (1, 2, 3, 7):
        (tmp_path / f"low.log.{i}").write_text(f"old {i}\n")
    (tmp_path / "low.log.3.gz").write_bytes(b"not really gzip")
    lf = LogFile(str(path), max_bytes=10, backup_count=3)
    lf.write(b"x" * 600 + b"\n")  # past the limit and past the bytes between two size checks
    lf.close()
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert names == ["low.log", "low.log.1", "low.log.2", "low.log.3", "low.log.7"], names
    assert (tmp_path / "low.log.2").read_text() == "old 1\n"
    assert (tmp_path / "low.log.3").read_text() == "old 2\n"
    assert (tmp_path / "low.log.7").read_text() == "old 7\n"


def test_second_rotator_does_not_rotate_again(tmp_path: Path) -> None:
    """Two writers that both saw the file over the limit: only the first one rotates."""
    path = str(tmp_path / "r.log")
    a = LogFile(path, max_bytes=1000, backup_count=5)
    b = LogFile(path, max_bytes=1000, backup_count=5)  # its own descriptor, like another process
    b.write(b"b0\n")  # b now holds the file that is about to be rotated
    for n in range(40):
        a.write(f"a{n:02d}{'x' * 40}\n".encode())  # rotates once it is past 1000 bytes
    assert (tmp_path / "r.log.1").exists()
    b._rotate()  # b noticed the same size a moment later: the path is a new file now
    assert not (tmp_path / "r.log.2").exists()
    b.write(b"b1\n")
    assert "b1" in (tmp_path / "r.log").read_text()
    assert sorted(read_set(tmp_path / "r.log")) == sorted(
        ["b0", "b1", *(f"a{n:02d}{'x' * 40}" for n in range(40))]
    )
    a.close()
    b.close()


def test_backup_count_and_compression(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rotation keeps backup_count files; gzip runs in the background thread and is complete."""
    threads: set[str] = set()
    original = LogFile._compress_fd

    def spy(self: LogFile, side: int, fd: int, ino: int) -> None:
        threads.add(threading.current_thread().name)
        original(self, side, fd, ino)

    monkeypatch.setattr(LogFile, "_compress_fd", spy)
    lf = LogFile(str(tmp_path / "c.log"), max_bytes=4096, backup_count=3, compress=True)
    for n in range(3000):
        lf.write(f"line {n:05d}\n".encode())
    assert lf.wait_compressed(30)
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert names == ["c.log", "c.log.1.gz", "c.log.2.gz", "c.log.3.gz"]
    assert threads == {"diaglog-gzip"}, "compression must stay off the writing thread"
    lines = read_set(tmp_path / "c.log")
    first = int(lines[0].split()[1])
    assert lines == [f"line {n:05d}" for n in range(first, 3000)]
    lf.close()


def test_late_line_in_rotated_file_ends_up_in_the_gz(tmp_path: Path) -> None:
    """A writer still holding the rotated file delays its compression; its late line is kept."""
    path = str(tmp_path / "late.log")
    a = LogFile(path, max_bytes=2048, backup_count=10, compress=True)
    b = LogFile(path, max_bytes=2048, backup_count=10)  # like an idle worker process
    b.write(b"b before\n")
    for n in range(60):
        a.write(f"a{n:02d}{'x' * 40}\n".encode())
    assert (tmp_path / "late.log.1").exists()
    # b checked the generation just before the rotation, so its next line goes to the old file.
    os.write(b._fd, b"b late\n")
    assert not a.wait_compressed(0.5), "the file b still has open must not be compressed"
    b.write(b"b after\n")  # b notices the rotation, moves to the new file, lets go of the old one
    assert a.wait_compressed(30)
    with gzip.open(tmp_path / "late.log.1.gz", "rt") as f:
        old = f.read().splitlines()
    assert old[0] == "b before" and old[-1] == "b late"
    assert "b after" in (tmp_path / "late.log").read_text()
    a.close()
    b.close()


def test_fork_parent_and_child_share_the_file_set(tmp_path: Path) -> None:
    """A forked child and its parent keep writing one rotating set: every line once."""
    path = tmp_path / "f.log"
    lf = LogFile(str(path), max_bytes=4096, backup_count=1000)
    lf.write(b"parent first\n")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            for n in range(3000):
                lf.write(f"child {n}\n".encode())
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        os._exit(code)
    for n in range(3000):
        lf.write(f"parent {n}\n".encode())
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    lines = read_set(path)
    expected = ["parent first", *(f"{w} {n}" for w in ("parent", "child") for n in range(3000))]
    assert sorted(lines) == sorted(expected)
    lf.close()


# -- the logging bridge on its own ---------------------------------------------------------------


def test_handler_from_dictconfig(tmp_path: Path) -> None:
    """DiagLogHandler works from logging.config.dictConfig, in both formats, with rotation."""
    plain, js = tmp_path / "logs" / "app.log", tmp_path / "logs" / "app.jsonl"
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {
                "safe": {
                    "()": "flask_diaglog.DiagLogHandler",
                    "filename": str(plain),
                    "max_bytes": 2048,
                    "backup_count": 50,
                    "level": "INFO",
                },
                "safe_json": {
                    "()": "flask_diaglog.DiagLogHandler",
                    "filename": str(js),
                    "format": "json",
                },
            },
            "loggers": {
                "myapp": {"handlers": ["safe", "safe_json"], "level": "DEBUG", "propagate": False}
            },
        }
    )
    log = logging.getLogger("myapp.sub")
    log.debug("not at INFO")
    for n in range(100):
        log.info("hello %d\nsecond line", n, extra={"request_id": "r1"})
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("failed")
    lines = read_set(plain)
    assert len(lines) == 101
    assert lines[0].endswith(" | INFO | myapp.sub | req=r1 job=- | hello 0\\nsecond line")
    assert "ValueError: bad" in lines[-1]
    assert (tmp_path / "logs" / "app.log.1").exists()
    records = [json.loads(line) for line in js.read_text().splitlines()]
    assert records[0]["level"] == "DEBUG"
    assert records[1]["msg"] == "hello 0\nsecond line"
    assert records[1]["request_id"] == "r1"
    assert records[1]["event"] == "log"
    assert records[-1]["level"] == "ERROR" and "ValueError: bad" in records[-1]["exc"]
    for h in logging.getLogger("myapp").handlers:
        assert isinstance(h, DiagLogHandler)
        h.close()


def test_handler_needs_a_filename() -> None:
    """A standalone handler without a file is a clear error, and so is an unknown format."""
    with pytest.raises(ValueError, match="filename"):
        DiagLogHandler()
    with pytest.raises(ValueError, match="format"):
        DiagLogHandler("x.log", format="xml")


def test_standalone_handler_masks_secrets_as_the_diaglog_files_do(tmp_path: Path) -> None:
    """A standalone handler masks secrets in messages by the same rules and default key fragments
    as the diaglog files; ``redact`` replaces the fragments as ``DIAGLOG_REDACT`` does (the
    always-secret names stay masked)."""
    default = DiagLogHandler(str(tmp_path / "a.log"))
    own = DiagLogHandler(str(tmp_path / "b.log"), redact=["session"])
    log = logging.getLogger("secrets.test")
    log.propagate = False
    log.setLevel(logging.INFO)
    for h in (default, own):
        log.addHandler(h)
    log.info("login password=hunter2 session=s3cr3t api_key=k3y user=ann")
    for h in (default, own):
        log.removeHandler(h)
        h.close()
    a, b = (tmp_path / "a.log").read_text(), (tmp_path / "b.log").read_text()
    assert "hunter2" not in a and "k3y" not in a and "session=s3cr3t" in a and "user=ann" in a
    assert "s3cr3t" not in b and "k3y" not in b and "password=hunter2" in b


def test_standalone_handler_writes_plain_lines_of_the_records(tmp_path: Path) -> None:
    """The standalone handler writes exactly what plain_line makes of each record's parts."""
    handler = DiagLogHandler(str(tmp_path / "s.log"))
    log = logging.getLogger("shortcut.test")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    records: list[logging.LogRecord] = []
    spy = logging.Handler()
    spy.emit = records.append  # type: ignore[method-assign]
    log.addHandler(spy)
    log.info("plain %s", "text")
    log.warning("cr\rlf\ntab\tnul\x00 \u2028 é \udcff", extra={"request_id": "r9", "job_id": "j9"})
    log.log(25, "custom level")
    handler.close()
    expected = b"".join(
        plain_line(
            r.created,
            r.levelno,
            "log",
            r.name,
            getattr(r, "request_id", None),
            getattr(r, "job_id", None),
            r.getMessage(),
        )
        for r in records
    )
    assert (tmp_path / "s.log").read_bytes() == expected
    assert expected.count(b"\n") == 3


_UMASK_RUN = """
import os, sys, time
os.umask(0o027)
from flask import Flask
from flask_diaglog import DiagLog, stage
app = Flask("umask")
app.config.update(DIAGLOG_LOG_DIR=sys.argv[1], DIAGLOG_MAX_BYTES=2048, DIAGLOG_COMPRESS=True)
app.add_url_rule("/", view_func=lambda: "ok")
DiagLog(app)
client = app.test_client()
for _ in range(60):
    client.get("/")
deadline = time.monotonic() + 30
while not any(n.endswith(".gz") for n in os.listdir(sys.argv[1])) and time.monotonic() < deadline:
    time.sleep(0.05)
"""


def test_files_follow_the_umask(tmp_path: Path) -> None:
    """The log directory, the files, their lock sidecars, rotated and gzipped backups are made
    with the process's umask applied: under ``umask 027`` no file is readable by others."""
    log_dir = tmp_path / "logs"
    subprocess.run([sys.executable, "-c", _UMASK_RUN, str(log_dir)], check=True, timeout=120)
    names = sorted(p.name for p in log_dir.iterdir())
    assert "requests.log" in names and ".requests.log.lock" in names, names
    assert any(n.startswith("requests.log.") and n.endswith(".gz") for n in names), names
    assert stat.S_IMODE(log_dir.stat().st_mode) == 0o750
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in log_dir.iterdir()}
    assert modes == dict.fromkeys(names, 0o640)
