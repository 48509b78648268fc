"""``diaglog trace``: JSON records with ``ts``, unfolded tracebacks, the stage waterfall, a job's
whole story (the request that created it included) and one trail over several hosts."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from flask import Flask
from test_cli import render, write_log

from flask_diaglog import set_job_id, stage
from flask_diaglog.cli import diaglog_cli
from flask_diaglog.extension import DiagLog
from flask_diaglog.trail import job_end_msg, job_start_msg

T0 = datetime(2026, 11, 22, 10, 0, 0).timestamp()


def _run(args: list[str]) -> tuple[int, str]:
    result = Flask(__name__).test_cli_runner().invoke(diaglog_cli, args)
    return result.exit_code, result.output


def _boom_app(make_app: Callable[..., Flask], fmt: str) -> Flask:
    app = make_app({"TESTING": False, "DIAGLOG_FORMAT": fmt})

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("boom")

    app.test_client().get("/boom", headers={"X-Request-ID": "R-boom"})
    return app


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_trace_json_records_keep_ts(make_app: Callable[..., Flask], fmt: str) -> None:
    """Every --json record has an ISO 8601 ``ts``, its ``host`` and its ``file``."""
    app = _boom_app(make_app, fmt)
    out = app.test_cli_runner().invoke(diaglog_cli, ["trace", "R-boom", "--json"]).output
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["event"] for r in records] == ["request_start", "request_error", "request_end"]
    for r in records:
        assert datetime.fromisoformat(r["ts"]).tzinfo is not None
        assert r["host"] and r["file"] == "requests"


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_trace_unfolds_tracebacks(make_app: Callable[..., Flask], fmt: str) -> None:
    """A traceback is printed one frame line per line under its record, not as one escaped line."""
    app = _boom_app(make_app, fmt)
    lines = app.test_cli_runner().invoke(diaglog_cli, ["trace", "R-boom"]).output.splitlines()
    error = next(i for i, line in enumerate(lines) if "request_error GET /boom" in line)
    assert "Traceback" not in lines[error]
    assert lines[error + 1].endswith("| Traceback (most recent call last):")
    assert any(line.endswith('raise RuntimeError("boom")') for line in lines[error:])
    assert not any("\\n" in line for line in lines)


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_trace_json_keeps_the_traceback_as_text(make_app: Callable[..., Flask], fmt: str) -> None:
    """In --json, ``exc`` is the traceback with real line breaks, and ``msg`` is without it."""
    app = _boom_app(make_app, fmt)
    out = app.test_cli_runner().invoke(diaglog_cli, ["trace", "R-boom", "--json"]).output
    error = [json.loads(line) for line in out.splitlines()][1]
    assert error["msg"] == "request_error GET /boom RuntimeError: boom"
    assert error["exc"].startswith("Traceback (most recent call last):\n")


def _waterfall(out: str) -> dict[str, str]:
    """Waterfall rows by name: the bar between the pipes."""
    rows = out.split("waterfall:", 1)[1].splitlines()[1:]
    return {row[:46].strip(): row.split("|")[1] for row in rows}


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_waterfall_bars_are_proportional(tmp_path: Path, fmt: str) -> None:
    """One bar per stage, placed and sized by its time: 100 ms then 300 ms of a 400 ms request,
    on a 40-cell axis, are cells 0-10 and 10-40; a nested stage is indented under its parent."""
    stages = {"load": 100.0, "render": 300.0}
    write_log(
        tmp_path / "logs",
        "requests",
        [
            render(fmt, T0, "request_start", "request_start GET /p client=- type=- testing=false",
                   "R", None, {"method": "GET", "path": "/p"}),
            render(fmt, T0 + 0.1, "stage", "stage load 100.00ms ok", "R", None,
                   {"stage": "load", "duration_ms": 100.0, "ok": True}),
            render(fmt, T0 + 0.3, "stage", "stage render.mesh 100.00ms ok", "R", None,
                   {"stage": "render.mesh", "duration_ms": 100.0, "ok": True}),
            render(fmt, T0 + 0.4, "stage", "stage render 300.00ms ok", "R", None,
                   {"stage": "render", "duration_ms": 300.0, "ok": True}),
            render(fmt, T0 + 0.4, "request_end",
                   "request_end GET /p 200 400.00ms stages=load:100.00,render:300.00", "R", None,
                   {"method": "GET", "path": "/p", "status": 200, "duration_ms": 400.0,
                    "stages": stages}),
        ],
    )  # fmt: skip
    code, out = _run(["trace", "R", "--log-dir", str(tmp_path / "logs")])
    assert code == 0, out
    bars = _waterfall(out)
    assert bars == {
        "GET /p 200": "#" * 40,
        "load": "#" * 10 + " " * 30,
        "render": " " * 10 + "#" * 30,
        "render.mesh": " " * 20 + "#" * 10 + " " * 10,
    }
    rows = out.split("waterfall:", 1)[1].splitlines()
    assert "      render.mesh" in next(r for r in rows if "render.mesh" in r)  # depth 2


def test_waterfall_marks_a_failed_stage(tmp_path: Path) -> None:
    """A failed stage's bar is drawn with ``!`` instead of ``#``."""
    write_log(
        tmp_path / "logs",
        "requests",
        [
            render("plain", T0 + 0.2, "stage", "stage s 200.00ms failed: ValueError: x", "R"),
            render("plain", T0 + 0.2, "request_end", "request_end GET /p 500 200.00ms", "R"),
        ],
    )
    out = _run(["trace", "R", "--log-dir", str(tmp_path / "logs")])[1]
    assert _waterfall(out)["s"] == "!" * 40


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_waterfall_marks_a_retried_attempt_apart_from_a_failed_one(
    tmp_path: Path, fmt: str
) -> None:
    """A job attempt that failed and that its task queue runs again (``retried``) is drawn with
    ``~``, not ``!``: as ``summary`` and the dashboard count it, it is not a failed job. The
    second attempt fails for good (``!``), the third succeeds (``#``)."""
    name = "tasks.generate"
    lines = []
    for n, (ok, retried) in enumerate([(False, True), (False, False), (True, False)]):
        t = T0 + n
        error = None if ok else "ValueError: empty mesh"
        level = 20 if ok else 30 if retried else 40
        lines += [
            render(fmt, t, "job_start", job_start_msg(name, n + 1), "R", "J1",
                   {"name": name, "attempt": n + 1}),
            render(fmt, t + 0.5, "job_end",
                   job_end_msg(name, ok, 500.0, error=error, retried=retried), "R", "J1",
                   {"name": name, "duration_ms": 500.0, "ok": ok, "error": error,
                    "retried": retried or None}, level=level),
        ]  # fmt: skip
    write_log(tmp_path / "logs", "jobs", lines)
    code, out = _run(["trace", "J1", "--log-dir", str(tmp_path / "logs")])
    assert code == 0, out
    rows = out.split("waterfall:", 1)[1].splitlines()[1:]
    assert [row[:46].strip() for row in rows] == [f"job {name}"] * 3
    assert [set(row.split("|")[1].strip()) for row in rows] == [{"~"}, {"!"}, {"#"}]


def test_trace_of_a_job_id_shows_the_request_that_created_it(
    make_app: Callable[..., Flask],
) -> None:
    """A view that creates a job id (set_job_id) and spawns the work: trace <job id> shows the
    creating request from its start line (written before the id existed), the job, its end."""
    app = make_app({"TESTING": False, "DIAGLOG_FORMAT": "plain"}, init=False)
    diaglog = DiagLog(app)

    threads: list[threading.Thread] = []

    def work() -> None:
        with stage("generate"):
            pass

    @app.post("/upload")
    def upload() -> tuple[dict[str, str], int]:
        set_job_id("J-new")
        threads.append(diaglog.spawn(work))
        return {"job_id": "J-new"}, 202

    app.test_client().post("/upload", headers={"X-Request-ID": "R-up"})
    threads[0].join(10)
    out = app.test_cli_runner().invoke(diaglog_cli, ["trace", "J-new", "--json"]).output
    records = [json.loads(line) for line in out.splitlines()]
    events = [(r["file"], r["event"]) for r in records]
    assert events[0] == ("requests", "request_start")
    assert records[0]["request_id"] == "R-up" and "job_id" not in records[0]
    assert ("requests", "request_end") in events
    assert {("jobs", "job_start"), ("jobs", "stage"), ("jobs", "job_end")} <= set(events)


def _two_hosts(tmp_path: Path, fmt: str) -> tuple[Path, Path]:
    """A web host that enqueued job J (request R) and a worker host that ran it."""
    web, worker = tmp_path / "web" / "logs", tmp_path / "worker" / "logs"
    write_log(web, "requests", [
        render(fmt, T0, "request_start", "request_start POST /gen client=- type=- testing=false",
               "R", None, {"method": "POST", "path": "/gen"}),
        render(fmt, T0 + 0.010, "request_end", "request_end POST /gen 202 10.00ms", "R", "J",
               {"method": "POST", "path": "/gen", "status": 202, "duration_ms": 10.0}),
        render(fmt, T0 + 0.500, "request_end", "request_end GET /status 200 1.00ms", "R2", "J",
               {"method": "GET", "path": "/status", "status": 200, "duration_ms": 1.0}),
    ])  # fmt: skip
    write_log(worker, "jobs", [
        render(fmt, T0 + 0.020, "job_start", "job_start tasks.generate", "R", "J",
               {"name": "tasks.generate"}),
        render(fmt, T0 + 0.300, "stage", "stage mesh 250.00ms ok", "R", "J",
               {"stage": "mesh", "duration_ms": 250.0, "ok": True}),
        render(fmt, T0 + 0.310, "job_end", "job_end tasks.generate ok 290.00ms", "R", "J",
               {"name": "tasks.generate", "ok": True, "duration_ms": 290.0}),
    ])  # fmt: skip
    return web, worker


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_trace_merges_hosts_by_time(tmp_path: Path, fmt: str) -> None:
    """Two log directories (web, worker) are merged into one trail in time order."""
    web, worker = _two_hosts(tmp_path, fmt)
    args = ["trace", "J", "--json", "--log-dir", f"web={web}", "--log-dir", f"worker={worker}"]
    code, out = _run(args)
    assert code == 0, out
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["event"] for r in records] == [
        "request_start", "request_end", "job_start", "stage", "job_end", "request_end",
    ]  # fmt: skip
    assert [datetime.fromisoformat(r["ts"]) for r in records] == sorted(
        datetime.fromisoformat(r["ts"]) for r in records
    )


def test_plain_lines_are_labelled_with_their_directory(tmp_path: Path) -> None:
    """Plain lines carry no host: each takes its directory's label (LABEL=DIR, else the name)."""
    web, worker = _two_hosts(tmp_path, "plain")
    out = _run(["trace", "J", "--json", "--log-dir", f"web={web}", "--log-dir", f"gpu1={worker}"])
    hosts = {json.loads(line)["event"]: json.loads(line)["host"] for line in out[1].splitlines()}
    assert hosts["request_start"] == "web" and hosts["job_start"] == "gpu1"
    text = _run(["trace", "J", "--log-dir", f"web={web}", "--log-dir", f"gpu1={worker}"])[1]
    assert any(" gpu1 " in line and "job_start tasks.generate" in line for line in text.split("\n"))


def test_directories_with_one_name_get_distinct_labels(tmp_path: Path) -> None:
    """Two directories both called ``logs`` are told apart by their paths."""
    web, worker = _two_hosts(tmp_path, "plain")
    out = _run(["trace", "J", "--json", "--log-dir", str(web), "--log-dir", str(worker)])[1]
    hosts = {json.loads(line)["host"] for line in out.splitlines()}
    assert hosts == {str(web), str(worker)}


def test_json_lines_name_their_host(tmp_path: Path) -> None:
    """A JSON line's own ``host`` key names its host, whatever the directory is called."""
    line = json.loads(render("json", T0, "job_start", "job_start f", "R", "J", {"name": "f"}))
    write_log(tmp_path / "logs", "jobs", [json.dumps({**line, "host": "gpu-7"}) + "\n"])
    out = _run(["trace", "J", "--json", "--log-dir", str(tmp_path / "logs")])[1]
    assert json.loads(out)["host"] == "gpu-7"
