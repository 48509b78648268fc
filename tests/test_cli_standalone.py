"""The ``diaglog`` console script without an app, the group's ``--log-dir`` under ``flask``, the
progress bar on a terminal, and memory that stays bounded on big log sets."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from flask import Flask
from flask.cli import FlaskGroup
from test_cli import render, write_log

from flask_diaglog.cli import PROGRESS_FROM
from flask_diaglog.logread import label_dirs, merge_records, summarize

T0 = datetime(2026, 11, 22, 10, 0, 0).timestamp()
MAIN = "from flask_diaglog.cli import main; main()"


def _lines(count: int) -> list[str]:
    """``count`` request_end and stage lines, as the plain renderer writes them, fast."""
    end = render("plain", T0, "request_end", "request_end GET /api/items/PATH 200 MSms", "RID")
    stage = render("plain", T0, "stage", "stage load MSms ok", "RID")
    out = []
    for i in range(count):
        ms = f"{1 + i * 7919 % 3000 / 10:.2f}"
        tmpl = end if i % 3 == 0 else stage
        out.append(tmpl.replace("RID", f"r{i:x}").replace("PATH", str(i % 5000)).replace("MS", ms))
    return out


def _script(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", MAIN, *args], capture_output=True, text=True, timeout=120, **kw
    )  # type: ignore[call-overload, no-any-return]


def test_console_script_needs_no_app(tmp_path: Path) -> None:
    """``diaglog --log-dir DIR summary`` works in a directory without any Flask app."""
    write_log(tmp_path / "logs", "requests", _lines(3))
    done = _script("--log-dir", str(tmp_path / "logs"), "summary", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["routes"]["GET /api/items/<id>"]["count"] == 1


def test_console_script_reads_DIAGLOG_LOG_DIR(tmp_path: Path) -> None:
    """Without --log-dir, the standalone script reads DIAGLOG_LOG_DIR."""
    write_log(tmp_path / "logs", "requests", _lines(3))
    env = {**os.environ, "DIAGLOG_LOG_DIR": str(tmp_path / "logs")}
    done = _script("tail", "-n", "1", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert "stage load" in done.stdout


def test_console_script_reports_a_missing_directory(tmp_path: Path) -> None:
    """A log directory that does not exist is one clear line, not a traceback."""
    done = _script("--log-dir", str(tmp_path / "nope"), "summary", cwd=tmp_path)
    assert done.returncode == 1 and "does not exist" in done.stderr
    assert "Traceback" not in done.stderr


def test_group_log_dir_works_under_flask(tmp_path: Path, make_app: Callable[..., Flask]) -> None:
    """``flask diaglog --log-dir DIR trace ID`` reads DIR instead of the app's directory."""
    write_log(tmp_path / "other", "requests", _lines(1))
    app = make_app()
    result = app.test_cli_runner().invoke(
        FlaskGroup(create_app=lambda: app),
        ["diaglog", "--log-dir", str(tmp_path / "other"), "trace", "r0", "--json"],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["request_id"] == "r0"


def _stderr_on_a_terminal(args: list[str]) -> str:
    """Run the script with stderr on a pseudo-terminal; what it drew there."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", MAIN, *args], stdout=subprocess.DEVNULL, stderr=slave
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(120) == 0
    return b"".join(chunks).decode("utf-8", "replace")


@pytest.fixture(scope="module")
def big_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A log directory just over the progress bar's threshold."""
    directory = tmp_path_factory.mktemp("big")
    lines = _lines(60_000)
    write_log(directory, "requests", lines)
    assert (directory / "requests.log").stat().st_size > PROGRESS_FROM
    return directory


def test_big_scans_show_a_progress_bar_on_a_terminal(big_logs: Path) -> None:
    """On a terminal, a scan of a big log set draws a progress bar on stderr, up to 100%."""
    drawn = _stderr_on_a_terminal(["--log-dir", str(big_logs), "summary"])
    assert "reading logs" in drawn and "100%" in drawn


def test_no_progress_bar_when_stderr_is_not_a_terminal(big_logs: Path) -> None:
    """Piped or captured, stderr stays empty."""
    done = _script("--log-dir", str(big_logs), "summary")
    assert done.returncode == 0 and done.stderr == ""


@pytest.mark.slow
def test_summary_memory_is_bounded(tmp_path: Path) -> None:
    """Summarising 200 k lines holds well under 2 MiB at its peak (traced): the statistics keep
    buckets, not lines or durations."""
    write_log(tmp_path, "requests", _lines(200_000))
    tracemalloc.start()
    try:
        result = summarize(merge_records(label_dirs([str(tmp_path)])))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result["stages"]["load"]["count"] == 133_333
    assert peak < 2 << 20, f"peak {peak / 2**20:.1f} MiB"
