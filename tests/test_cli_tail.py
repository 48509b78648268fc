"""``diaglog tail``: filters by level, job, request, status and duration; time windows; several
hosts; ``-f`` follows new lines across rotations (a real process reading real files, and the
follower's poll step driven by the test while a real writer rotates and compresses)."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import select
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import pytest
from flask import Flask
from test_cli import render, write_log

from flask_diaglog.cli import diaglog_cli
from flask_diaglog.files import LogFile
from flask_diaglog.follow import Follower
from flask_diaglog.logread import Scan, label_dirs
from flask_diaglog.readfile import MAX_LINE

T0 = datetime(2026, 11, 22, 10, 0, 0).timestamp()
MAIN = "from flask_diaglog.cli import main; main()"


def _tail(log_dir: Path, *args: str) -> list[dict[str, object]]:
    result = (
        Flask(__name__)
        .test_cli_runner()
        .invoke(diaglog_cli, ["tail", "--json", "--log-dir", str(log_dir), *args])
    )
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines()]


def _end(ts: float, rid: str, jid: str | None, status: int, ms: float) -> str:
    return render(
        "plain", ts, "request_end", f"request_end GET /p {status} {ms:.2f}ms", rid, jid,
        level=30 if status >= 500 else 20,
    )  # fmt: skip


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    """Requests R1 (job J1, 200, 5 ms), R2 (500, 900 ms), R3 (job J2, 404, 50 ms); a job line."""
    write_log(tmp_path, "requests", [
        _end(T0, "R1", "J1", 200, 5.0),
        _end(T0 + 60, "R2", None, 500, 900.0),
        _end(T0 + 120, "R3", "J2", 404, 50.0),
    ])  # fmt: skip
    write_log(tmp_path, "jobs", [render("plain", T0 + 30, "job_start", "job_start f", "R1", "J1")])
    return tmp_path


def _ids(records: list[dict[str, object]]) -> list[object]:
    return [r["request_id"] for r in records]


def test_tail_filters_by_status_class(logs: Path) -> None:
    """--status 5xx keeps the end lines of failed requests; --status 404 one status."""
    assert _ids(_tail(logs, "--status", "5xx")) == ["R2"]
    assert _ids(_tail(logs, "--status", "404")) == ["R3"]


def test_tail_filters_by_minimum_duration(logs: Path) -> None:
    """--min-ms keeps lines whose duration is at least that."""
    assert _ids(_tail(logs, "--min-ms", "50")) == ["R2", "R3"]


def test_tail_filters_by_level(logs: Path) -> None:
    """--level WARNING keeps WARNING and above."""
    assert _ids(_tail(logs, "--level", "WARNING")) == ["R2"]


def test_tail_filters_by_job_across_files(logs: Path) -> None:
    """--job reads requests.log and jobs.log, merged by time, and keeps that job's lines."""
    records = _tail(logs, "--job", "J1")
    assert [(r["file"], r["event"]) for r in records] == [
        ("requests", "request_end"), ("jobs", "job_start"),
    ]  # fmt: skip


def test_tail_filters_by_request(logs: Path) -> None:
    """--request keeps one request's lines."""
    assert _ids(_tail(logs, "--request", "R3")) == ["R3"]


def test_tail_since_and_until(logs: Path) -> None:
    """--since/--until bound the lines by time."""
    window = ["--since", "2026-11-22T10:00:30", "--until", "2026-11-22T10:01:30"]
    assert _ids(_tail(logs, *window)) == ["R2"]


def test_a_bad_status_filter_is_a_usage_error(logs: Path) -> None:
    """--status that is neither a status nor a class is refused, naming the forms."""
    result = (
        Flask(__name__)
        .test_cli_runner()
        .invoke(diaglog_cli, ["tail", "--log-dir", str(logs), "--status", "bad"])
    )
    assert result.exit_code == 2 and "5xx" in result.output


@pytest.mark.parametrize("status", ["9xx", "0xx", "999", "42"])
def test_a_status_out_of_range_is_a_usage_error(logs: Path, status: str) -> None:
    """--status takes a status from 100 to 599 or a class from 1xx to 5xx, nothing else."""
    result = (
        Flask(__name__)
        .test_cli_runner()
        .invoke(diaglog_cli, ["tail", "--log-dir", str(logs), "--status", status])
    )
    assert result.exit_code == 2 and "Invalid value for '--status'" in result.output


def test_a_negative_minimum_duration_is_a_usage_error(logs: Path) -> None:
    """--min-ms below 0 is refused, naming the option."""
    result = (
        Flask(__name__)
        .test_cli_runner()
        .invoke(diaglog_cli, ["tail", "--log-dir", str(logs), "--min-ms", "-5"])
    )
    assert result.exit_code == 2 and "Invalid value for '--min-ms'" in result.output


def test_a_negative_line_count_is_a_usage_error(logs: Path) -> None:
    """-n below 0 is refused, naming the option (it printed nothing and succeeded)."""
    result = (
        Flask(__name__)
        .test_cli_runner()
        .invoke(diaglog_cli, ["tail", "--log-dir", str(logs), "-n", "-1"])
    )
    assert result.exit_code == 2 and "Invalid value for '-n' / '--lines'" in result.output


def test_tail_of_several_hosts_prefixes_the_host(tmp_path: Path) -> None:
    """With several directories each line is prefixed with its host's label, in time order."""
    write_log(tmp_path / "a", "requests", [_end(T0 + 1, "Ra", None, 200, 1.0)])
    write_log(tmp_path / "b", "requests", [_end(T0, "Rb", None, 200, 1.0)])
    result = (
        Flask(__name__)
        .test_cli_runner()
        .invoke(
            diaglog_cli,
            ["tail", "--log-dir", str(tmp_path / "a"), "--log-dir", str(tmp_path / "b")],
        )
    )
    lines = result.output.splitlines()
    assert [line.split("  ", 1)[0] for line in lines] == ["b", "a"]
    assert "req=Rb" in lines[0]


def test_table_mode_shows_json_lines_as_the_plain_rows(tmp_path: Path) -> None:
    """In table mode a JSON-format file prints the rows a plain-format file of the same records
    prints (a traceback folded the same way), never raw JSON."""
    boom = 'Traceback (most recent call last):\n  File "app.py", line 1\nValueError: no'
    for fmt in ("plain", "json"):
        write_log(tmp_path / fmt, "requests", [
            render(fmt, T0, "request_end", "request_end GET /p 200 5.00ms", "R1", "J1",
                   {"method": "GET", "path": "/p", "status": 200, "duration_ms": 5.0}),
            render(fmt, T0 + 1.5, "log", "failed", "R2", level=40, exc=boom, logger="app"),
            render(fmt, T0 + 2, "log", "odd level", "R3", level=25, logger="app"),
        ])  # fmt: skip
    out = {
        fmt: Flask(__name__)
        .test_cli_runner()
        .invoke(diaglog_cli, ["tail", "--log-dir", str(tmp_path / fmt)])
        .output.splitlines()
        for fmt in ("plain", "json")
    }
    assert len(out["plain"]) == 3 and not any(line.startswith("{") for line in out["json"])
    assert out["json"] == out["plain"]
    assert "| Level 25 | app | req=R3 job=- | odd level" in out["json"][2]


class _Reader:
    """Lines of a child's stdout (or ``stream``), waiting at most ``timeout`` seconds for each."""

    def __init__(self, proc: subprocess.Popen[bytes], stream: IO[bytes] | None = None) -> None:
        self.proc, self.buf = proc, b""
        self.stream = stream if stream is not None else proc.stdout

    def line(self, timeout: float = 30.0) -> str:
        assert self.stream is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.stream], [], [], max(left, 0))
            if not ready:
                raise AssertionError(f"no line from tail -f; so far {self.buf!r}")
            chunk = os.read(self.stream.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"tail -f ended; so far {self.buf!r}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()


def _msg(n: int) -> str:
    return render("plain", time.time(), "log", f"line {n}", "R", logger="app")


def test_follow_continues_across_a_rotation(tmp_path: Path) -> None:
    """tail -f prints new lines, the rest of a file rotated to .1, then the new file's lines."""
    log = tmp_path / "requests.log"
    log.write_text(_msg(1))
    proc = subprocess.Popen(
        [sys.executable, "-c", MAIN, "--log-dir", str(tmp_path), "tail", "-f", "-n", "1"],
        stdout=subprocess.PIPE,
    )
    try:
        out = _Reader(proc)
        assert out.line().endswith("line 1")
        with open(log, "a") as fh:
            fh.write(_msg(2))
        assert out.line().endswith("line 2")
        with open(log, "a") as fh:
            fh.write(_msg(3))
        os.rename(log, tmp_path / "requests.log.1")
        log.write_text(_msg(4))
        assert [out.line()[-6:], out.line()[-6:]] == ["line 3", "line 4"]
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_follow_prints_every_line_once_across_several_rotations(
    tmp_path: Path, compress: bool
) -> None:
    """Several rotations between two polls (backups compressed or not), from a file not read yet
    and from one read part-way: each line is printed once, in order."""
    writer = LogFile(
        str(tmp_path / "requests.log"), max_bytes=1024, backup_count=50, compress=compress
    )
    got: list[str] = []
    follower = Follower(label_dirs([str(tmp_path)]), ["requests"], lambda r: got.append(r.raw))
    follower.mark()
    sent: list[str] = []

    def write(count: int) -> None:
        for _ in range(count):
            sent.append(_msg(len(sent)))
            writer.write(sent[-1].encode())
        assert writer.wait_compressed()

    with follower, contextlib.closing(writer):
        for count in (60, 5, 60, 45):  # 60-byte lines: 60 of them are three or four rotations
            write(count)
            follower.poll()
    assert got == [line.rstrip("\n") for line in sent]


#: The first line every file of a crash-looping worker starts with: the same, to the millisecond.
_STARTED = render("plain", T0, "log", "worker started", "R", logger="app")


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_follow_tells_apart_files_with_the_same_first_line(tmp_path: Path, compress: bool) -> None:
    """Files whose first lines are the same (each starts with the same line, written in the
    same millisecond), rotated by the real writer several times between two polls, compressed
    or not: each line is printed once, in order."""
    path = tmp_path / "requests.log"
    writer = LogFile(str(path), max_bytes=1024, backup_count=50, compress=compress)
    got: list[str] = []
    follower = Follower(label_dirs([str(tmp_path)]), ["requests"], lambda r: got.append(r.raw))
    sent: list[str] = []

    def write(count: int) -> None:
        for _ in range(count):
            sent.append(_STARTED if path.stat().st_size == 0 else _msg(len(sent)))
            writer.write(sent[-1].encode())
        assert writer.wait_compressed()

    with follower, contextlib.closing(writer):
        write(3)
        follower.mark()
        del sent[:]
        for count in (40, 5, 40, 3, 30):  # 60-byte lines: 40 of them are two or three rotations
            write(count)
            follower.poll()
    firsts = {p.name: _first_line(p) for p in tmp_path.glob("requests.log*")}
    assert len(firsts) > 5 and set(firsts.values()) == {_STARTED}, firsts
    assert got == [line.rstrip("\n") for line in sent]


def _first_line(path: Path) -> str:
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        return str(fh.readline())


@pytest.mark.parametrize("regrown", [False, True], ids=["emptied", "regrown"])
def test_follow_across_a_copytruncate(tmp_path: Path, regrown: bool) -> None:
    """A rotation that copies the file to .1 and empties it in place (logrotate's copytruncate):
    the lines written before the copy come from the copy, then the file's new lines, also when
    it has grown past where it was read (from the same first line) before the next poll."""
    path = tmp_path / "requests.log"
    sent = [_STARTED, _msg(1)]
    path.write_text("".join(sent))
    got: list[str] = []
    with Follower(label_dirs([str(tmp_path)]), ["requests"], lambda r: got.append(r.raw)) as f:
        f.mark()
        del sent[:]
        for n in range(2, 5):
            sent.append(_msg(n))
            with open(path, "a") as fh:
                fh.write(sent[-1])
            f.poll()
        sent += [_msg(5), _msg(6)]
        with open(path, "a") as fh:
            fh.write(sent[-2] + sent[-1])
        shutil.copyfile(path, tmp_path / "requests.log.1")
        with open(path, "r+") as fh:
            fh.truncate(0)
        new = [_STARTED, *(_msg(n) for n in range(7, 12 if regrown else 8))]
        path.write_text("".join(new))
        sent += new
        f.poll()
    assert got == [line.rstrip("\n") for line in sent]


def test_follow_skips_and_counts_a_line_over_the_limit(tmp_path: Path) -> None:
    """A line over MAX_LINE in the followed file, written across two polls, is skipped without
    being held and counted as every reader counts it, its end (a well-formed line after the
    limit) included; so is one in a backup read after a rotation."""
    path = tmp_path / "requests.log"
    path.write_text(_msg(0))
    got: list[str] = []
    scan = Scan()
    dirs = label_dirs([str(tmp_path)])
    with Follower(dirs, ["requests"], lambda r: got.append(r.raw), scan) as follower:
        follower.mark()
        with open(path, "a") as fh:
            fh.write(_msg(1) + "x" * MAX_LINE)
        follower.poll()
        with open(path, "a") as fh:
            fh.write(_msg(2) + _msg(3) + "not a diaglog line\n")
        follower.poll()
        assert [line[-6:] for line in got] == ["line 1", "line 3"]
        assert (scan.lines, scan.skipped) == (4, 2)
        with open(path, "a") as fh:
            fh.write("y" * (MAX_LINE + 10) + "\n" + _msg(4))
        os.rename(path, tmp_path / "requests.log.1")
        path.write_text(_msg(5))
        follower.poll()
    assert [line[-6:] for line in got] == ["line 1", "line 3", "line 4", "line 5"]
    assert (scan.lines, scan.skipped) == (7, 3)


def test_tail_f_says_how_many_lines_it_skipped(tmp_path: Path) -> None:
    """tail -f says on stderr, as summary says it, how many of the lines read were skipped (a
    line over MAX_LINE, a line that is not a diaglog line), once more lines were."""
    log = tmp_path / "requests.log"
    log.write_text(_msg(1))
    proc = subprocess.Popen(
        [sys.executable, "-c", MAIN, "--log-dir", str(tmp_path), "tail", "-f", "-n", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = _Reader(proc), _Reader(proc, proc.stderr)
        assert out.line().endswith("line 1")
        with open(log, "a") as fh:
            fh.write("x" * (MAX_LINE + 1) + "\n" + _msg(2))
        assert out.line().endswith("line 2")
        assert err.line() == "1 of 3 lines were not diaglog lines and were skipped"
        with open(log, "a") as fh:
            fh.write("garbled\n" + _msg(3))
        assert out.line().endswith("line 3")
        assert err.line() == "2 of 5 lines were not diaglog lines and were skipped"
    finally:
        proc.terminate()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            assert stream is not None
            stream.close()
