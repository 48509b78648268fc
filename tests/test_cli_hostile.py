"""The commands over hostile files: whatever a log directory holds (crafted lines, lone
surrogates, absurd values, endless lines, dangling links, FIFOs), every command finishes, says
what it skipped, and prints nothing a terminal or a JSON-lines reader could take for more than
it is."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from flask import Flask
from test_cli import write_log

from flask_diaglog import stage
from flask_diaglog.cli import diaglog_cli
from flask_diaglog.logread import tail_records
from flask_diaglog.readfile import MAX_LINE

T0 = datetime(2026, 11, 22, 10, 0, 0).timestamp()
ISO = datetime.fromtimestamp(T0).astimezone().isoformat(timespec="milliseconds")


def _run(log_dir: Path, *args: str) -> tuple[int, str]:
    result = (
        Flask(__name__).test_cli_runner().invoke(diaglog_cli, ["--log-dir", str(log_dir), *args])
    )
    return result.exit_code, result.output


def _line(**fields: object) -> str:
    """A JSON line as an older writer wrote a lone surrogate: as the JSON escape ``\\ud800``."""
    return (
        json.dumps({"ts": ISO, "level": "INFO", "logger": "flask_diaglog.request", **fields}) + "\n"
    )


def _surrogate_logs(log_dir: Path) -> None:
    end = {"method": "GET", "path": "/n", "status": 200, "duration_ms": 1.0}
    write_log(log_dir, "requests", [
        _line(event="log", msg="name \ud800", request_id="r1"),
        _line(event="stage", msg="stage s\udc9bx 1.00ms ok", request_id="r1", stage="s\udc9bx",
              duration_ms=1.0, ok=True),
        _line(event="request_end", msg="request_end GET /n 200 1.00ms", request_id="r1",
              stages={"s\udc9bx": 1.0}, **end),
    ])  # fmt: skip
    write_log(log_dir, "jobs", [
        _line(event="job_end", msg="job_end t failed 1.00ms: E: \udc80", logger="flask_diaglog.job",
              request_id="r1", job_id="J1", name="t", ok=False, error="E: \udc80", duration_ms=1.0),
    ])  # fmt: skip


COMMANDS = [
    ["trace", "r1"], ["trace", "r1", "--json"], ["tail", "--file", "all"],
    ["tail", "--file", "all", "--json"], ["summary"], ["summary", "--json"],
]  # fmt: skip


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_a_lone_surrogate_is_shown_as_its_escape(tmp_path: Path, args: list[str]) -> None:
    """A lone surrogate in a JSON line (a client's ``"\\ud800"`` logged by a view) is printed as
    the text ``\\ud800``, as a plain line shows it: no command fails, none prints a raw byte."""
    _surrogate_logs(tmp_path)
    code, out = _run(tmp_path, *args)
    assert code == 0, out
    out.encode("utf-8")  # strict: no surrogate left
    shown = [out] if "--json" not in args else _texts([json.loads(x) for x in out.splitlines()])
    "".join(shown).encode("utf-8")  # nor one a JSON escape gives back
    assert any("\\udc9b" in text or "\\udc80" in text for text in shown)


def _texts(value: object) -> list[str]:
    """Every text in a parsed JSON value, keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in [k, *_texts(v)]]
    if isinstance(value, list):
        return [t for v in value for t in _texts(v)]
    return []


_END_W22 = (
    '"level": "INFO", "event": "request_end", "logger": "flask_diaglog.request", '
    '"msg": "request_end GET /b 200 1.00ms", "request_id": "w22", "method": "GET", "path": "/b", '
    '"status": 200, "duration_ms": 1.0'
)


@pytest.mark.parametrize("ts", ["5", "null", "[]"])
def test_a_line_whose_time_is_not_text_is_skipped_and_counted(tmp_path: Path, ts: str) -> None:
    """A JSON line whose ``ts`` is not text is not a diaglog line: summary skips and counts it."""
    write_log(tmp_path, "requests", ["{" + f'"ts": {ts}, ' + _END_W22 + "}\n"])
    code, out = _run(tmp_path, "summary")
    assert code == 0, out
    assert "1 of 1 lines were not diaglog lines and were skipped" in out


def test_an_end_line_without_its_fields_is_summarised(tmp_path: Path) -> None:
    """``{"event":"request_end"}`` (no time, method, status or duration) is a request of 0 ms in
    the summary's tables, not a traceback."""
    write_log(tmp_path, "requests", ['{"event":"request_end"}\n'])
    code, out = _run(tmp_path, "summary")
    assert code == 0, out
    assert "slowest requests" in out and " 0.00 " in out


@pytest.mark.parametrize("ms", ["1e+308", "-1.0"])
def test_a_duration_out_of_range_is_skipped_and_counted(tmp_path: Path, ms: str) -> None:
    """A duration below 0 or beyond any time (``1e+308``) is a wrong-typed field: skipped."""
    line = '{"ts": "' + ISO + '", ' + _END_W22.replace('"duration_ms": 1.0', f'"duration_ms": {ms}')
    write_log(tmp_path, "requests", [line + "}\n"])
    code, out = _run(tmp_path, "summary")
    assert code == 0, out
    assert "1 of 1 lines were not diaglog lines and were skipped" in out


def _ok_end(rid: str) -> str:
    return '{"ts": "' + ISO + '", ' + _END_W22.replace('"w22"', f'"{rid}"') + "}\n"


def test_a_line_over_the_limit_is_skipped_and_counted(tmp_path: Path) -> None:
    """A line over MAX_LINE is skipped and counted, even a well-formed one, without being held:
    the lines after it are read."""
    huge = _ok_end("huge").replace('"msg": "', '"msg": "' + "x" * MAX_LINE)
    with gzip.open(tmp_path / "requests.log.1.gz", "wt") as fh:
        fh.write(huge + "\n\n\n" + _ok_end("after"))
    code, out = _run(tmp_path, "summary", "--json")
    assert code == 0, out
    data = json.loads(out)
    assert (data["lines"], data["skipped"]) == (2, 1)
    assert [r["request_id"] for r in data["slowest"]] == ["after"]


@pytest.mark.parametrize(
    "make", ["dangling link", "link loop", "fifo", "device"], ids=lambda m: m.replace(" ", "-")
)
@pytest.mark.parametrize("args", [["summary"], ["trace", "w22"], ["tail", "--file", "all"]])
def test_a_file_that_cannot_be_read_is_skipped_and_named(
    tmp_path: Path, make: str, args: list[str]
) -> None:
    """A backup that is not a readable regular file (a dangling symlink, a symlink loop, a FIFO,
    ``-> /dev/zero``) is skipped and named; the command reads the rest and never blocks."""
    write_log(tmp_path, "requests", [_ok_end("w22")])
    bad = tmp_path / "jobs.log.1"
    if make == "dangling link":
        bad.symlink_to(tmp_path / "nonexistent")
    elif make == "link loop":
        bad.symlink_to(bad)
    elif make == "fifo":
        os.mkfifo(bad)
    else:
        bad.symlink_to("/dev/zero")
    code, out = _run(tmp_path, *args)
    assert code == 0, out
    assert "w22" in out or "GET /b" in out
    assert f"skipped, cannot be read: {bad}" in out


@pytest.mark.parametrize(
    "args", [["tail", "--json"], ["trace", "R1", "--json"], ["summary", "--json"]]
)
def test_json_output_is_one_object_per_line_for_every_splitter(
    make_app: Callable[..., Flask], log_dir: Path, args: list[str]
) -> None:
    """A stage name with U+2028, NEL and other line breaks (percent-encoded in plain lines,
    decoded by the reader) is escaped in --json output: ``str.splitlines()`` sees one line per
    object, and each reads back to the name."""
    name = "load\u2028model\x85x\u2029y"
    app = make_app({"TESTING": False})

    @app.get("/s")
    def view() -> str:
        with stage(name):
            return "ok"

    app.test_client().get("/s", headers={"X-Request-ID": "R1"})
    code, out = _run(log_dir, *args)
    assert code == 0, out
    lines = out.splitlines()
    assert len(lines) == (1 if args[0] == "summary" else 3)
    assert name in "".join(_texts([json.loads(line) for line in lines]))


def test_tail_escapes_controls_in_a_crafted_plain_line(tmp_path: Path) -> None:
    """A plain line holding a raw escape sequence (not written by diaglog) is printed escaped."""
    write_log(tmp_path, "requests", [
        "2026-11-22 10:00:00.000 | INFO | app | req=r job=- | \x1b[2Jcleared\u2028x\n"
    ])  # fmt: skip
    code, out = _run(tmp_path, "tail")
    assert code == 0, out
    assert out.splitlines() == [
        "2026-11-22 10:00:00.000 | INFO | app | req=r job=- | \\x1b[2Jcleared\\u2028x"
    ]


@pytest.mark.parametrize("make", ["fifo", "device"])
def test_tail_records_reads_regular_files_only(tmp_path: Path, make: str) -> None:
    """``logread.tail_records`` of a current file that is a FIFO or ``-> /dev/zero`` is empty:
    it neither blocks nor reads without end."""
    path = tmp_path / "requests.log"
    os.mkfifo(path) if make == "fifo" else path.symlink_to("/dev/zero")
    assert tail_records(str(tmp_path), "requests") == []


@pytest.mark.parametrize("args", [["tail", "--json"], ["trace", "w22", "--json"]])
def test_a_lines_own_ts_and_file_keys_do_not_replace_the_readers(
    tmp_path: Path, args: list[str]
) -> None:
    """``--json`` gives ``ts`` (ISO 8601 with milliseconds and offset), ``host`` and ``file`` as
    read: a line's own ``ts`` (another spelling of its time) and ``file`` (crafted: ``errors``)
    do not replace them."""
    line = "{" + _END_W22 + ', "ts": "2026-11-22T10:00:00", "file": "errors", "host": "web1"}\n'
    write_log(tmp_path, "requests", [line])
    code, out = _run(tmp_path, *args)
    assert code == 0, out
    (record,) = [json.loads(x) for x in out.splitlines()]
    assert (record["ts"], record["file"], record["host"]) == (ISO, "requests", "web1")
    assert list(record)[:3] == ["ts", "host", "file"]


def test_tail_says_how_many_lines_it_skipped(tmp_path: Path) -> None:
    """tail says on stderr, as summary says it, how many of the lines it read were skipped."""
    write_log(tmp_path, "requests", [_ok_end("w22"), "garbled\n", "x" * MAX_LINE + "\n"])
    code, out = _run(tmp_path, "tail")
    assert code == 0, out
    lines = out.splitlines()
    assert "req=w22" in lines[0]
    assert lines[1:] == ["2 of 3 lines were not diaglog lines and were skipped"]
