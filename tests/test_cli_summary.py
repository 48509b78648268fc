"""``diaglog summary``: per route, stage and job percentiles, failed jobs named, slowest requests,
unrouted paths grouped, time windows, several hosts; and the bounded statistics behind it."""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from test_cli import render, write_log

from flask_diaglog.cli import diaglog_cli
from flask_diaglog.logread import NO_ROUTE, Stats

T0 = datetime(2026, 11, 22, 10, 0, 0).timestamp()


def _run(args: list[str]) -> tuple[int, str]:
    result = Flask(__name__).test_cli_runner().invoke(diaglog_cli, args)
    return result.exit_code, result.output


def _end(fmt: str, ts: float, path: str, status: int, ms: float, rid: str = "R") -> str:
    return render(
        fmt, ts, "request_end", f"request_end GET {path} {status} {ms:.2f}ms", rid, None,
        {"method": "GET", "path": path, "status": status, "duration_ms": ms},
    )  # fmt: skip


def _job_end(fmt: str, ts: float, jid: str, ok: bool, error: str | None = None) -> str:
    msg = f"job_end tasks.gen {'ok' if ok else 'failed'} 5.00ms" + (f": {error}" if error else "")
    fields = {"name": "tasks.gen", "ok": ok, "duration_ms": 5.0, "error": error}
    return render(fmt, ts, "job_end", msg, "R", jid, fields, level=20 if ok else 40)


def _summary(log_dir: Path, *args: str) -> dict[str, Any]:
    code, out = _run(["summary", "--json", "--log-dir", str(log_dir), *args])
    assert code == 0, out
    data: dict[str, Any] = json.loads(out)
    return data


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_route_percentiles(tmp_path: Path, fmt: str) -> None:
    """100 requests of 1..100 ms: count, p50/p95/p99/max by nearest rank, and the error rate."""
    lines = [
        _end(fmt, T0 + i, "/items/42", 500 if i < 5 else 200, float(i + 1)) for i in range(100)
    ]
    write_log(tmp_path, "requests", lines)
    route = _summary(tmp_path)["routes"]["GET /items/<id>"]
    assert route == {
        "count": 100, "errors": 5, "error_rate": 0.05, "p50_ms": 51.0, "p95_ms": 95.0,
        "p99_ms": 99.0, "max_ms": 100.0, "total_ms": 5050.0,
    }  # fmt: skip


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_paths_that_match_no_route_are_one_row(tmp_path: Path, fmt: str) -> None:
    """Scanner paths that got a 404 are one row, not one row per raw path."""
    lines = [_end(fmt, T0 + i, f"/wp-admin/{'x' * i}.php", 404, 1.0) for i in range(30)]
    lines.append(_end(fmt, T0 + 40, "/\\r\\nFAKE LINE", 404, 1.0))
    write_log(tmp_path, "requests", [*lines, _end(fmt, T0 + 50, "/ok", 200, 1.0)])
    routes = _summary(tmp_path)["routes"]
    assert set(routes) == {NO_ROUTE, "GET /ok"} and routes[NO_ROUTE]["count"] == 31


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_failed_jobs_are_named_with_their_errors(tmp_path: Path, fmt: str) -> None:
    """The failed jobs are listed with id and error; the job table counts runs and failures."""
    write_log(tmp_path, "jobs", [
        _job_end(fmt, T0, "J1", True),
        _job_end(fmt, T0 + 1, "J2", False, "ValueError: bad mesh"),
        _job_end(fmt, T0 + 2, "J3", False, "MemoryError"),
    ])  # fmt: skip
    data = _summary(tmp_path)
    assert data["failed_jobs"] == 2
    assert [(f["job_id"], f["error"]) for f in data["failed"]] == [
        ("J2", "ValueError: bad mesh"), ("J3", "MemoryError"),
    ]  # fmt: skip
    assert data["jobs"]["tasks.gen"]["count"] == 3 and data["jobs"]["tasks.gen"]["errors"] == 2
    table = _run(["summary", "--log-dir", str(tmp_path)])[1]
    row = next(line for line in table.splitlines() if line.startswith("  J2 "))
    assert row.split()[1:4] == ["tasks.gen", "ValueError:", "bad"]


def test_slowest_requests_come_first(tmp_path: Path) -> None:
    """``slowest`` lists the --top slowest requests, slowest first, with their ids."""
    write_log(tmp_path, "requests", [
        _end("plain", T0 + i, "/p", 200, ms, f"R{i}") for i, ms in enumerate([5, 50, 1, 70, 20])
    ])  # fmt: skip
    slow = _summary(tmp_path, "--top", "3")["slowest"]
    assert [(s["request_id"], s["duration_ms"]) for s in slow] == [
        ("R3", 70.0), ("R1", 50.0), ("R4", 20.0),
    ]  # fmt: skip


def test_stages_have_percentiles_and_failures(tmp_path: Path) -> None:
    """Per stage: count, failures and percentiles, in the JSON and in the terminal table."""
    write_log(tmp_path, "requests", [
        render("plain", T0, "stage", "stage mesh 10.00ms ok", "R"),
        render("plain", T0 + 1, "stage", "stage mesh 30.00ms failed: OSError: disk", "R"),
    ])  # fmt: skip
    mesh = _summary(tmp_path)["stages"]["mesh"]
    assert (mesh["count"], mesh["errors"], mesh["max_ms"]) == (2, 1, 30.0)
    table = _run(["summary", "--log-dir", str(tmp_path)])[1].splitlines()
    assert table[0].split() == [
        "stage", "count", "failed", "fail", "%", "p50", "ms", "p95", "ms", "p99", "ms", "max", "ms",
        "total", "ms",
    ]  # fmt: skip
    assert table[1].split()[:4] == ["mesh", "2", "1", "50.0"]


def test_since_and_until_select_a_window(tmp_path: Path) -> None:
    """--since and --until keep only the lines between the two times (ISO or relative)."""
    write_log(tmp_path, "requests", [_end("plain", T0 + 60 * i, "/p", 200, 1.0) for i in range(10)])
    window = ["--since", "2026-11-22T10:02:00", "--until", "2026-11-22 10:04:30"]
    assert _summary(tmp_path, *window)["routes"]["GET /p"]["count"] == 3
    assert _summary(tmp_path, "--since", "1h")["routes"] == {}


def test_a_bad_time_is_a_usage_error(tmp_path: Path) -> None:
    """An unreadable --since names the option and the accepted forms."""
    code, out = _run(["summary", "--log-dir", str(tmp_path), "--since", "yesterday"])
    assert code == 2 and "Invalid value for '--since'" in out and "15m" in out


def test_a_negative_top_is_a_usage_error(tmp_path: Path) -> None:
    """--top below 0 is refused, naming the option, never a traceback."""
    write_log(tmp_path, "requests", [_end("plain", T0, "/p", 200, 1.0)])
    code, out = _run(["summary", "--log-dir", str(tmp_path), "--top", "-1"])
    assert code == 2 and "Invalid value for '--top'" in out and ">=0" in out


def test_garbled_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    """A torn or foreign line is skipped, and the summary says how many there were."""
    write_log(tmp_path, "requests", [_end("plain", T0, "/p", 200, 1.0), "GET / HTTP/1.1 junk\n"])
    data = _summary(tmp_path)
    assert (data["lines"], data["skipped"], data["routes"]["GET /p"]["count"]) == (2, 1, 1)


def test_a_directory_given_twice_is_read_once(tmp_path: Path) -> None:
    """The same --log-dir twice (before and after the command, spelled differently) counts its
    lines once, under the directory's own name."""
    write_log(tmp_path / "web", "requests", [_end("plain", T0, "/p", 200, 1.0)])
    _, out = _run(["--log-dir", str(tmp_path / "web"), "summary", "--json",
                   "--log-dir", f"{tmp_path}/web/"])  # fmt: skip
    data = json.loads(out)
    assert (data["routes"]["GET /p"]["count"], data["hosts"]) == (1, ["web"])


@pytest.mark.parametrize("value", ['"slow"', "NaN", "1e999", "null"])
def test_lines_with_a_wrong_typed_duration_are_skipped_and_counted(
    tmp_path: Path, value: str
) -> None:
    """A JSON end line whose duration is not a finite number is skipped and counted, never a
    crash nor a NaN in the statistics."""
    good = _end("json", T0, "/p", 200, 1.0)
    bad = good.replace('"duration_ms":1.0', f'"duration_ms":{value}')
    assert bad != good
    write_log(tmp_path, "requests", [good, bad])
    data = _summary(tmp_path)
    assert (data["lines"], data["skipped"], data["routes"]["GET /p"]["count"]) == (2, 1, 1)


def damaged_gz(lines: list[str], how: str) -> bytes:
    """A gzipped backup of ``lines`` whose second half is damaged: ``truncated`` (missing) or
    ``corrupt`` (a deflate block of an invalid type)."""
    half = len(lines) // 2
    gz = zlib.compressobj(wbits=31)
    data = gz.compress("".join(lines[:half]).encode()) + gz.flush(zlib.Z_FULL_FLUSH)
    rest = gz.compress("".join(lines[half:]).encode()) + gz.flush()
    return data if how == "truncated" else data + b"\x07" + rest


@pytest.mark.parametrize("how", ["truncated", "corrupt"])
def test_a_damaged_backup_counts_as_skipped(tmp_path: Path, how: str) -> None:
    """A damaged .gz backup is read up to the damage, and the rest counts as one skipped line,
    in the JSON and the text summary alike (never a crash, never silent)."""
    lines = [_end("json", T0 + i, f"/old/{i}", 200, 1.0) for i in range(200)]
    (tmp_path / "requests.log.1.gz").write_bytes(damaged_gz(lines, how))
    write_log(tmp_path, "requests", [_end("json", T0 + 300, "/p", 200, 1.0)])
    result = _summary(tmp_path)
    old = result["routes"]["GET /old/<id>"]["count"]
    assert 0 < old <= 100  # the zlib reader loses the lines it held when it met the damage
    assert (result["lines"], result["skipped"]) == (old + 2, 1)
    assert result["damaged"] == [str(tmp_path / "requests.log.1.gz")]
    code, out = _run(["summary", "--log-dir", str(tmp_path)])
    assert code == 0 and f"1 of {old + 2} lines were not diaglog lines and were skipped" in out
    assert f"damaged, read up to the damage: {tmp_path / 'requests.log.1.gz'}" in out


def test_summary_adds_up_several_hosts(tmp_path: Path) -> None:
    """Several --log-dir: the counts of all hosts, and the hosts' labels."""
    write_log(tmp_path / "a", "requests", [_end("plain", T0, "/p", 200, 1.0)])
    write_log(tmp_path / "b", "requests", [_end("json", T0 + 1, "/p", 200, 3.0)])
    _, out = _run(["summary", "--json", "--log-dir", str(tmp_path / "a"), "--log-dir",
                      f"web2={tmp_path / 'b'}"])  # fmt: skip
    data = json.loads(out)
    assert data["routes"]["GET /p"]["count"] == 2 and data["hosts"] == ["a", "web2"]


def test_summary_of_a_live_app(make_app: Callable[..., Flask]) -> None:
    """Under ``flask diaglog``, the app's log directory is read; the table has p99 per route."""
    app = make_app({"TESTING": False})
    app.add_url_rule("/fast", "fast", lambda: "ok")
    app.test_client().get("/fast")
    out = app.test_cli_runner().invoke(diaglog_cli, ["summary"]).output.splitlines()
    assert out[0].split()[:4] == ["route", "count", "5xx", "err"] and "p99" in out[0]
    assert out[1].startswith("GET /fast ")


def test_stats_stay_within_one_percent_in_bounded_memory() -> None:
    """Past its exact range a Stats keeps buckets, not values: percentiles stay within 1%."""
    stats = Stats()
    values = [0.5 + (i * 7919 % 100_000) / 10 for i in range(100_000)]
    for v in values:
        stats.add(v)
    ordered = sorted(values)
    for q in (0.5, 0.95, 0.99):
        exact = ordered[round(q * (len(ordered) - 1))]
        assert abs(stats.quantile(q) - exact) <= 0.01 * exact
    assert stats.max == max(values) and stats.count == 100_000
    assert len(stats._buckets) < 1000 and stats._values is None
