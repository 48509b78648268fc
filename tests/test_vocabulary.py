"""The line vocabulary round-trips: every event kind, rendered in both layouts, reads back to the
fields it was written with, through the same parser the CLI and the dashboard use."""

from __future__ import annotations

import time
from typing import Any

import pytest

from flask_diaglog import trail
from flask_diaglog.files.render import RENDERERS
from flask_diaglog.logread import parse_line

TOTALS = {"validate": 1.25, "render.mesh": 40.5, "load model, 50% ": 2.0}  # names any text

#: kind -> (level, message, fields): built with the vocabulary's own builders.
CASES: dict[str, tuple[int, str, dict[str, Any]]] = {
    "request_start": (
        20,
        trail.request_start_msg(
            "POST", "/api/generate?x=1", "10.0.0.7", "application/json", "false"
        ),
        {
            "method": "POST",
            "path": "/api/generate",
            "query": "x=1",
            "client": "10.0.0.7",
            "content_type": "application/json",
            "testing": False,
        },
    ),
    "stage": (
        30,
        trail.stage_msg("render.mesh 50%, pass\t2", 12.5, False, "ValueError: bad mesh: 3 holes"),
        {
            "stage": "render.mesh 50%, pass\t2",
            "duration_ms": 12.5,
            "ok": False,
            "error": "ValueError: bad mesh: 3 holes",
        },
    ),
    "request_end": (
        30,
        trail.request_end_msg(
            "GET", "/a path/x", 503, 75.25, None, TOTALS, aborted=True, hung=2, slow=True
        ),
        {
            "method": "GET",
            "path": "/a path/x",
            "status": 503,
            "duration_ms": 75.25,
            "stages": TOTALS,
            "aborted": True,
            "hung": 2,
            "slow": True,
        },
    ),
    "request_error": (
        40,
        trail.request_error_msg("PUT", "/x y", "KeyError: 'job: 1'"),
        {"method": "PUT", "path": "/x y", "error": "KeyError: 'job: 1'"},
    ),
    "log": (20, "rendered 3 pages: request_end GET / 200", {}),
    "job_start": (20, trail.job_start_msg("pipeline.run"), {"name": "pipeline.run"}),
    "job_end": (
        40,
        trail.job_end_msg(
            "pipeline.run", False, 120.5, TOTALS, error="RuntimeError: out of: memory", hung=1
        ),
        {
            "name": "pipeline.run",
            "ok": False,
            "duration_ms": 120.5,
            "stages": TOTALS,
            "hung": 1,
            "error": "RuntimeError: out of: memory",
        },
    ),
    "job_rejected": (
        20,
        trail.job_rejected_msg("POST", "/api/jobs/j 1", "j1", "in_progress"),
        {"method": "POST", "path": "/api/jobs/j 1", "reason": "in_progress"},
    ),
    "hang": (
        30,
        trail.hang_msg(
            "job pipeline.run (from POST /api/generate)", 31000.0, "load model", 1, "Thread-3"
        ),
        {
            "name": "pipeline.run",
            "method": "POST",
            "path": "/api/generate",
            "duration_ms": 31000.0,
            "stage": "load model",
            "hung": 1,
        },
    ),
    "progress": (
        20,
        trail.progress_msg(0.425, 3, 7, "rendering mesh - pass 2"),
        {"fraction": 0.425, "step": 3.0, "total": 7.0, "message": "rendering mesh - pass 2"},
    ),
}


def test_every_kind_has_a_case() -> None:
    """The cases below cover every kind the vocabulary declares."""
    assert set(CASES) == set(trail.KINDS)


@pytest.mark.parametrize("fmt", ["plain", "json"])
@pytest.mark.parametrize("kind", trail.KINDS)
def test_kind_round_trips(kind: str, fmt: str) -> None:
    """A line of each kind parses back to its kind, ids, level, message and fields."""
    round_trip(kind, fmt, *CASES[kind])


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_a_retried_job_start_round_trips_its_attempt(fmt: str) -> None:
    """The job_start of a task's second run says ``attempt=2`` and reads back with it."""
    msg = trail.job_start_msg("tasks.generate", attempt=2)
    assert msg == "job_start tasks.generate attempt=2"
    round_trip("job_start", fmt, 20, msg, {"name": "tasks.generate", "attempt": 2})


def test_a_first_attempt_leaves_the_job_start_message_as_it_was() -> None:
    """Attempt 1 (or none) adds no word: the common line stays short."""
    assert trail.job_start_msg("f", attempt=1) == trail.job_start_msg("f") == "job_start f"
    assert trail.parse_message("job_start", "job_start f") == {"name": "f"}


def round_trip(kind: str, fmt: str, level: int, msg: str, fields: dict[str, Any]) -> None:
    logger = trail.KIND_LOGGER[kind] if kind != "log" else "myapp.helpers"
    ts = time.time()
    data = RENDERERS[fmt](ts, level, kind, logger, "req-1", "job-9", msg, fields, None, "T")
    rec = parse_line(data.decode(), trail.file_for("request"))
    assert rec is not None
    assert rec.event == kind
    assert rec.request_id == "req-1" and rec.job_id == "job-9"
    assert rec.data["level"] == trail.level_name(level)
    assert rec.data["msg"] == msg
    assert abs(rec.ts - ts) < 0.002
    got = {k: rec.data.get(k) for k in fields}
    assert got == fields


def test_failed_and_successful_job_end_carry_the_same_fields() -> None:
    """A failed job_end says everything a successful one says, and its error besides."""
    ok = trail.parse_message("job_end", trail.job_end_msg("f", True, 1.0, TOTALS, hung=1))
    failed = trail.parse_message(
        "job_end", trail.job_end_msg("f", False, 1.0, TOTALS, error="E: x", hung=1)
    )
    assert set(failed) == set(ok) | {"error"}
    assert failed["stages"] == ok["stages"] == TOTALS and failed["hung"] == ok["hung"] == 1


def test_an_app_line_that_looks_like_ours_stays_a_log_line() -> None:
    """Only diaglog's own loggers write structured messages; an app's look-alike is ``log``."""
    assert trail.kind_of("myapp", "request_end GET / 200 1.00ms") == "log"
    assert trail.kind_of("flask_diaglog.request", "request_end GET / 200 1.00ms") == "request_end"


@pytest.mark.parametrize(
    ("method", "path", "shown"),
    [
        ("GET", "/a\nb\x1b", "GET /a\\nb\\x1b"),
        ("G\u2028T", "/a", "G\\u2028T /a"),
        (None, "/a\x85", "None /a\\x85"),
        ("GET", None, "GET None"),
    ],
)
def test_an_end_message_escapes_the_clients_method_and_path(
    method: str | None, path: str | None, shown: str
) -> None:
    """``request_end`` messages are printable as built (the plain layout does not check them):
    a method or path that is missing shows as ``None``, one with a control as its escape."""
    msg = trail.request_end_msg(method, path, 200, 1.0, "/r\x1b")
    assert msg == f"request_end {shown} 200 1.00ms route=/r\\x1b"
    assert msg.isprintable()
