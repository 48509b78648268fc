"""A full disk, for real: a 256 KiB tmpfs mounted for each test (needs root; CI runs as root).

What must hold (issue 14, item 5): no SIGBUS when the disk is full before the first write (the
``.lock`` sidecar included), no torn record, writing resumes by itself when space comes back and
the outage is reported once. Whatever could die of a SIGBUS runs in a child process, whose exit
code is checked, so a regression fails the test instead of killing pytest.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import re
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_multiprocess import read_set

from flask_diaglog.files.render import split_json, split_plain
from flask_diaglog.files.writer import TORN_MARK, LogFile
from flask_diaglog.logread import parse_line

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A fresh 256 KiB tmpfs, unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs the tests as root)")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(disk: Path) -> Path:
    """Fill the disk to the last page with a filler file; returns the filler."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while True:
            try:
                os.write(fd, bytes(4096))
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    finally:
        os.close(fd)
    return filler


def run_child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
        check=False,
    )
    assert done.returncode != -signal.SIGBUS, f"killed by SIGBUS:\n{done.stderr}"
    assert done.returncode == 0, done.stderr
    return done


def wait_for(what: str, ready: Callable[[], bool], child: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not ready():
        assert child.poll() is None, f"the child died waiting for {what} (exit {child.returncode})"
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


def assert_whole_records(lines: list[str], fmt: str) -> None:
    """Every line is exactly one record of the app's traffic: split by the layout's own splitter
    and read back by logread, a start, a view line or an end of one request, all of the same id."""
    for line in lines:
        assert TORN_MARK.decode().strip() not in line, line
        parts = split_json(line) if fmt == "json" else split_plain(line)
        assert parts is not None, f"not one {fmt} record: {line!r}"
        rec = parse_line(line)
        assert rec is not None, line
        rid = rec.request_id
        assert rid is not None and re.fullmatch(r"r\d+", rid), line
        n = rid[1:]
        if rec.event == "log":
            assert rec.data["msg"] == f"view ran {n}", line
        else:
            assert rec.event in ("request_start", "request_end"), line
            assert rec.data["path"] == f"/ok/{n}", line
            if rec.event == "request_end":
                assert rec.data["status"] == 200, line


# -- the writer on its own ------------------------------------------------------------------------


def _write_until_torn(lf: LogFile, reports: list[OSError | None], path: Path) -> list[bytes]:
    """Write 1000-byte records into the file's last free page until one does not fit."""
    written = []
    for n in range(100):
        rec = f"rec {n:03d} {'x' * 991}\n".encode()
        lf.write(rec)
        written.append(rec)
        if reports:
            break
    assert reports and reports[0] is not None and reports[0].errno == errno.ENOSPC
    assert not path.read_bytes().endswith(b"\n"), "the last record was expected to tear"
    return written


def test_torn_record_is_completed_when_space_comes_back(disk: Path) -> None:
    """A record the disk took only part of is not lost: when space comes back its rest is written
    before the next record, so the file holds every record whole, in order."""
    path = disk / "t.log"
    reports: list[OSError | None] = []
    lf = LogFile(str(path), on_error=lambda f, exc: reports.append(exc))
    lf.write(b"first\n")
    filler = fill(disk)
    written = _write_until_torn(lf, reports, path)
    lf.write(b"lost 1\n")
    lf.write(b"lost 2\n")
    assert lf.failed_writes == 2
    filler.unlink()
    lf.write(b"after\n")
    assert path.read_bytes() == b"first\n" + b"".join(written) + b"after\n"
    assert reports[1:] == [None]
    assert lf.failed_writes == 2
    lf.close()


def test_torn_record_of_another_writer_is_marked(disk: Path) -> None:
    """A second writer (another process) that writes first after the outage ends the torn start
    with TORN_MARK, so its own record starts a line; the first writer then counts it as lost."""
    path = disk / "t.log"
    reports: list[OSError | None] = []
    a = LogFile(str(path), on_error=lambda f, exc: reports.append(exc))
    b = LogFile(str(path))  # its own descriptor and mapping, like another worker process
    a.write(b"a0\n")
    b.write(b"b0\n")
    filler = fill(disk)
    written = _write_until_torn(a, reports, path)
    filler.unlink()
    b.write(b"b1\n")
    a.write(b"a1\n")
    lines = path.read_bytes().split(b"\n")
    whole = [rec.rstrip(b"\n") for rec in written[:-1]]
    assert lines[: 2 + len(whole)] == [b"a0", b"b0", *whole]
    torn = lines[2 + len(whole)] + b"\n"
    assert torn.endswith(TORN_MARK) and written[-1].startswith(torn[: -len(TORN_MARK)])
    assert lines[3 + len(whole) :] == [b"b1", b"a1", b""]
    assert (a.failed_writes, b.failed_writes) == (1, 0)
    a.close()
    b.close()


NO_SIDECAR_SPACE = """
    import os, sys
    from flask_diaglog.files.writer import LogFile

    disk = sys.argv[1]
    path = os.path.join(disk, "t.log")
    a = LogFile(path, max_bytes=300, backup_count=3)  # the disk is full: no sidecar page
    a.write(b"lost\\n")
    assert a.failed_writes == 1
    os.unlink(os.path.join(disk, "filler"))
    b = LogFile(path, max_bytes=300, backup_count=3)  # another process, started with space
    a.write(b"a1\\n")
    for n in range(20):
        b.write(b"b%02d %s\\n" % (n, b"y" * 30))  # b rotates past 300 bytes
    a.write(b"a2\\n")  # a follows the rotation, with or without its sidecar mapping by now
    for n in range(20):
        b.write(b"c%02d %s\\n" % (n, b"y" * 30))
    a.write(b"a3\\n")
    print(a.failed_writes, b.failed_writes)
"""


@pytest.mark.parametrize("leftover", [False, True], ids=["new", "sparse-leftover"])
def test_writer_started_on_a_full_disk_follows_rotations(disk: Path, leftover: bool) -> None:
    """Started while the disk is full (fresh, or with a sparse sidecar an older version left),
    a writer does not die of SIGBUS, loses only what it wrote while full, and follows another
    process's rotations to the new file once there is space."""
    if leftover:  # what an older version left: 64 bytes, sparse, no page behind them
        (disk / ".t.log.lock").touch()
        os.truncate(disk / ".t.log.lock", 64)
    fill(disk)
    out = run_child(NO_SIDECAR_SPACE, str(disk)).stdout.split()
    assert out == ["1", "0"]
    current = (disk / "t.log").read_text().splitlines()
    assert current[-1] == "a3" and "a2" not in current
    lines = read_set(disk / "t.log")
    assert lines.count("a1") == lines.count("a2") == lines.count("a3") == 1
    assert "lost" not in lines
    assert len(lines) == 43


# -- an app in a child process ---------------------------------------------------------------------

APP = """
    import itertools, json, logging, mmap, os, sys, threading
    from flask import Flask
    from flask.logging import default_handler
    from flask_diaglog import DiagLog, stats

    def make_app(log_dir, fmt):
        app = Flask("fullapp")
        app.config.update(
            DIAGLOG_LOG_DIR=log_dir, DIAGLOG_FORMAT=fmt, DIAGLOG_MAX_BYTES=32 * 1024,
            DIAGLOG_BACKUP_COUNT=3, PROPAGATE_EXCEPTIONS=False,
        )
        app.logger.removeHandler(default_handler)  # stderr: diaglog's own reports only
        view_log = logging.getLogger("fullapp.view")

        @app.get("/ok/<int:n>")
        def ok(n):
            view_log.info("view ran %d", n)
            return {"n": n}

        @app.get("/boom")
        def boom():
            raise RuntimeError("kaput")

        DiagLog(app)
        return app
"""

FULL_AT_START = (
    APP
    + """
    log_dir, filler, fmt = sys.argv[1:4]
    app = make_app(log_dir, fmt)
    client = app.test_client()
    statuses = []

    def get(path, rid):
        statuses.append(client.get(path, headers={"X-Request-ID": rid}).status_code)

    for n in range(20):
        get(f"/ok/{n}", f"full{n}")
    get("/boom", "fullboom")
    lost = stats(app)["failed_writes"]
    os.unlink(filler)
    for n in range(20, 120):
        get(f"/ok/{n}", f"r{n}")
    print(json.dumps({"statuses": statuses, "lost_while_full": lost,
                      "lost": stats(app)["failed_writes"]}))
"""
)


@pytest.mark.parametrize("leftover", [False, True], ids=["new", "sparse-leftover"])
def test_app_started_on_a_full_disk_serves_and_recovers(disk: Path, leftover: bool) -> None:
    """An app whose first write (and the sidecars' creation) meets a full disk: no SIGBUS, every
    response as without diaglog, the outage reported once per file, lines after recovery whole."""
    log_dir = disk / "logs"
    log_dir.mkdir()
    if leftover:
        (log_dir / ".requests.log.lock").touch()
        os.truncate(log_dir / ".requests.log.lock", 64)  # an older version's: sparse
    filler = fill(disk)
    done = run_child(FULL_AT_START, str(log_dir), str(filler), "json")
    out = json.loads(done.stdout)
    assert out["statuses"] == [200] * 20 + [500] + [200] * 100
    assert out["lost_while_full"] >= 20 * 3
    assert out["lost"] == out["lost_while_full"]
    assert done.stderr.count("requests.log failed") == 1, done.stderr
    assert done.stderr.count("errors.log failed") == 1, done.stderr
    assert done.stderr.count("requests.log is writable again") == 1, done.stderr
    lines = read_set(log_dir / "requests.log")
    assert_whole_records(lines, "json")
    ends = {parse_line(line).request_id for line in lines if '"request_end"' in line}  # type: ignore[union-attr]
    assert {f"r{n}" for n in range(100, 120)} <= ends


TRAFFIC = (
    APP
    + """
    log_dir, progress_path, stop_path, fmt = sys.argv[1:5]
    app = make_app(log_dir, fmt)
    fd = os.open(progress_path, os.O_RDWR)
    progress = memoryview(mmap.mmap(fd, 16)).cast("Q")  # [served, last id to serve (0: any)]
    ids = itertools.count(1)
    done_lock = threading.Lock()
    statuses = {}

    def serve():
        client = app.test_client()
        while not os.path.exists(stop_path):
            n = next(ids)
            if progress[1] and n > progress[1]:
                return
            status = client.get(f"/ok/{n}", headers={"X-Request-ID": f"r{n}"}).status_code
            with done_lock:
                statuses[status] = statuses.get(status, 0) + 1
                progress[0] += 1

    threads = [threading.Thread(target=serve) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"statuses": statuses, "lost": stats(app)["failed_writes"]}))
"""
)


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_disk_filling_up_under_traffic_then_recovering(
    disk: Path, tmp_path: Path, fmt: str
) -> None:
    """4 threads serve requests; the disk fills up under them, then space comes back. Every
    response is 200, the outage is reported once and its end once, the requests served after the
    recovery are all in the files, and every line is one whole record. (The requests after the
    recovery are counted out, not stopped by a timer: the file set keeps 128 KiB, about 100 JSON
    requests, and on a slow machine a timer let rotation drop the first of them.)"""
    log_dir = disk / "logs"
    progress_path = tmp_path / "progress"
    progress_path.write_bytes(bytes(16))
    stop_path = tmp_path / "stop"
    fd = os.open(progress_path, os.O_RDWR)
    progress = mmap.mmap(fd, 16)

    def served() -> int:
        return int(struct.unpack_from("=Q", progress, 0)[0])

    args = [str(log_dir), str(progress_path), str(stop_path), fmt]
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(TRAFFIC), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        wait_for("50 requests", lambda: served() >= 50, child)
        filler = fill(disk)  # while the threads keep serving
        full_at = served()
        wait_for("100 requests on the full disk", lambda: served() >= full_at + 100, child)
        filler.unlink()
        back_at = served()
        limit = back_at + 60  # no id past it is served (unless served before it was set)
        struct.pack_into("=Q", progress, 8, limit)
        wait_for("60 requests after recovery", lambda: served() >= limit, child)
        stop_path.touch()
        out, err = child.communicate(timeout=60)
        last = served()  # every id up to here was served: a thread stops between requests
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
        progress.close()
        os.close(fd)
    assert child.returncode != -signal.SIGBUS, f"killed by SIGBUS:\n{err}"
    assert child.returncode == 0, err
    result = json.loads(out)
    assert list(result["statuses"]) == ["200"], result
    assert result["lost"] > 0
    assert err.count("requests.log failed") == 1, err
    assert err.count("requests.log is writable again") == 1, err
    assert "Traceback" not in err, err
    lines = read_set(log_dir / "requests.log")
    assert_whole_records(lines, fmt)
    # Every request that began after the filler was gone (4 threads: at most 4 were in flight,
    # so ids past back_at + 4 started later) is in the files: start, view line and end.
    first_after = back_at + 5
    seen: dict[str, int] = {}
    for line in lines:
        rec = parse_line(line)
        assert rec is not None and rec.request_id is not None
        seen[rec.request_id] = seen.get(rec.request_id, 0) + 1
    missing = [n for n in range(first_after, last + 1) if seen.get(f"r{n}") != 3]
    assert not missing, f"requests after recovery not all written whole: {missing[:10]}"


COMPRESS_CHILD = """
import sys, time
from pathlib import Path
from flask_diaglog.files.writer import LogFile

path, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
lf = LogFile(path, max_bytes=1000, backup_count=3, compress=True)
lf.write(b"a" * 990 + b"\\n")  # its page is allocated: appends within it need no space
ready.touch()
while not go.exists():
    time.sleep(0.01)
# Past the limit and past the bytes between two size checks, still within the page: it rotates,
# and gzipping the backup needs space there is not.
lf.write(b"b" * 600 + b"\\n")
assert Path(path + ".1").exists()
time.sleep(4)  # the compressor retries about 7 times meanwhile
ready.unlink()  # the parent frees the space now
assert lf.wait_compressed(30), "the backup was not compressed once space came back"
print("compressed", flush=True)
lf.close()
"""


def test_compressing_on_a_full_disk_is_reported_once_and_done_later(
    disk: Path, tmp_path: Path
) -> None:
    """A backup that cannot be gzipped for want of space: one message for the whole outage, not
    one per retry; and it is compressed once space comes back."""
    ready, go = tmp_path / "ready", tmp_path / "go"
    child = subprocess.Popen(
        [sys.executable, "-c", COMPRESS_CHILD, str(disk / "c.log"), str(ready), str(go)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        wait_for("the first record", ready.exists, child)
        filler = fill(disk)
        go.touch()
        wait_for("the outage to last", lambda: not ready.exists(), child)
        filler.unlink()
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0, err
    assert out.strip() == "compressed"
    assert err.count("flask-diaglog: compressing") == 1, err
    assert "No space left on device" in err, err
    assert (disk / "c.log.1.gz").exists() and not (disk / "c.log.1").exists()
