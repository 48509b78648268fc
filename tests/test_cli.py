"""The ``flask diaglog`` commands read the real files (plain, JSON, rotated, gzipped)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_diaglog import stage, trail
from flask_diaglog.cli import diaglog_cli
from flask_diaglog.files.render import RENDERERS
from flask_diaglog.logread import parse_line, route_of


def _traffic(app: Flask) -> None:
    @app.get("/fast")
    def fast() -> str:
        return "ok"

    @app.post("/jobs/<job_id>/generate")
    def generate(job_id: str) -> tuple[str, int]:
        with stage("generate"):
            app.logger.info("working on %s", job_id)
        return "", 202

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("boom")

    client = app.test_client()
    for _ in range(3):
        client.get("/fast")
    client.post("/jobs/J1/generate", headers={"X-Request-ID": "R1"})
    client.get("/boom")


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_summary_counts_routes_errors_and_stages(make_app: Callable[..., Flask], fmt: str) -> None:
    """summary shows per-route counts, 5xx and percentiles, and stage totals, for both formats."""
    app = make_app({"TESTING": False, "DIAGLOG_FORMAT": fmt})
    _traffic(app)
    result = app.test_cli_runner().invoke(diaglog_cli, ["summary", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["routes"]["GET /fast"]["count"] == 3
    assert data["routes"]["GET /boom"]["errors"] == 1
    assert data["routes"]["POST /jobs/<job_id>/generate"]["count"] == 1
    assert data["stages"]["generate"]["count"] == 1
    table = app.test_cli_runner().invoke(diaglog_cli, ["summary"]).output
    assert "GET /fast" in table and "p95 ms" in table


def test_trace_collects_one_request_across_files(make_app: Callable[..., Flask]) -> None:
    """trace ID prints every line of that request or job id, once, in time order."""
    app = make_app({"TESTING": False})
    _traffic(app)
    out = app.test_cli_runner().invoke(diaglog_cli, ["trace", "R1", "--json"]).output
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["event"], r["file"]) for r in records] == [
        ("request_start", "requests"), ("log", "requests"), ("stage", "requests"),
        ("request_end", "requests"),
    ]  # fmt: skip
    missing = app.test_cli_runner().invoke(diaglog_cli, ["trace", "nope"])
    assert missing.exit_code == 1 and "no line has request id or job id 'nope'" in missing.output


def test_tail_reads_rotated_and_gzipped_backups(tmp_path: Path) -> None:
    """tail and trace read backups (.1, .2.gz) as well as the current file, oldest first."""
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    line = "2026-11-22 10:00:0{n}.000 | INFO | flask_diaglog.request | req=R job=- | msg {n}\n"
    with gzip.open(log_dir / "requests.log.2.gz", "wt") as fh:
        fh.write(line.format(n=1))
    (log_dir / "requests.log.1").write_text(line.format(n=2))
    (log_dir / "requests.log").write_text(line.format(n=3))
    app = Flask(__name__)
    out = app.test_cli_runner().invoke(diaglog_cli, ["tail", "--dir", str(log_dir), "-n", "10"])
    assert out.exit_code == 0
    assert [x[-5:] for x in out.output.splitlines()] == ["msg 1", "msg 2", "msg 3"]
    trace = app.test_cli_runner().invoke(
        diaglog_cli, ["trace", "R", "--dir", str(log_dir), "--json"]
    )
    assert [json.loads(x)["msg"] for x in trace.output.splitlines()] == ["msg 1", "msg 2", "msg 3"]


def test_tail_level_filter(make_app: Callable[..., Flask]) -> None:
    """tail --level ERROR shows only error lines."""
    app = make_app({"TESTING": False})
    _traffic(app)
    out = app.test_cli_runner().invoke(diaglog_cli, ["tail", "--file", "all", "--level", "ERROR"])
    lines = out.output.splitlines()
    assert lines and all(" | ERROR | " in line for line in lines)


def test_config_shows_resolved_values(make_app: Callable[..., Flask]) -> None:
    """config lists every DIAGLOG_* key with its resolved value, hiding the live token."""
    app = make_app({"DIAGLOG_LIVE_TOKEN": "hunter2-hunter2-hunter2"})
    out = app.test_cli_runner().invoke(diaglog_cli, ["config"]).output
    assert "DIAGLOG_FORMAT = 'plain'" in out
    assert "hunter2" not in out and "DIAGLOG_LIVE_TOKEN = '***'" in out


def test_missing_dir_is_a_clear_error(tmp_path: Path) -> None:
    """A log directory that does not exist is reported, not a traceback."""
    out = (
        Flask(__name__)
        .test_cli_runner()
        .invoke(diaglog_cli, ["tail", "--dir", str(tmp_path / "nope")])
    )
    assert out.exit_code == 1 and "does not exist" in out.output


def test_a_file_given_as_the_log_dir_is_a_clear_error(tmp_path: Path) -> None:
    """A --log-dir that is a file is reported as not a directory, not as missing."""
    (tmp_path / "requests.log").write_text("")
    out = (
        Flask(__name__)
        .test_cli_runner()
        .invoke(diaglog_cli, ["tail", "--dir", str(tmp_path / "requests.log")])
    )
    assert out.exit_code == 1 and "is not a directory" in out.output


def test_routes_fold_ids() -> None:
    """Summary routes fold the job id and id-like segments, keeping the route shape."""
    assert route_of("/api/jobs/4c1f9e0b2a7d4e55/generate") == "/api/jobs/<id>/generate"
    assert route_of("/api/jobs/J-1/generate", "J-1") == "/api/jobs/<job_id>/generate"
    assert route_of("/users/42/avatar") == "/users/<id>/avatar"
    assert route_of("/static/app.css") == "/static/app.css"


def test_parse_plain_line_recovers_fields() -> None:
    """A plain request_end line parses back into status, duration and stages."""
    rec = parse_line(
        "2026-11-22 10:15:02.123 | WARNING | flask_diaglog.request | req=a job=b | "
        "request_end POST /api/x y 503 12.50ms stages=validate:1.00,gen:10.25 slow"
    )
    assert rec is not None
    assert rec.data["event"] == "request_end" and rec.data["status"] == 503
    assert rec.data["path"] == "/api/x y" and rec.data["duration_ms"] == 12.5
    assert rec.data["stages"] == {"validate": 1.0, "gen": 10.25}
    assert (rec.request_id, rec.job_id) == ("a", "b")


def test_flask_command_is_registered(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    """The `flask diaglog` group is available through the flask.commands entry point."""
    from flask.cli import FlaskGroup

    app = make_app()
    group = FlaskGroup(create_app=lambda: app)
    runner = app.test_cli_runner()
    result = runner.invoke(group, ["diaglog", "--help"])
    assert result.exit_code == 0 and "trace" in result.output


def render(
    fmt: str,
    ts: float,
    kind: str,
    msg: str,
    rid: str | None = None,
    jid: str | None = None,
    fields: dict[str, Any] | None = None,
    *,
    level: int = 20,
    exc: str | None = None,
    logger: str | None = None,
) -> str:
    """One line as diaglog writes it, through the real renderer and the vocabulary's logger."""
    logger = logger or trail.KIND_LOGGER[kind]
    data = RENDERERS[fmt](ts, level, kind, logger, rid, jid, msg, fields, exc, "MainThread")
    return data.decode()


def write_log(directory: Path, name: str, lines: list[str]) -> None:
    """Append rendered lines to ``directory/name.log`` (the directory is created)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f"{name}.log", "a", encoding="utf-8") as fh:
        fh.write("".join(lines))
