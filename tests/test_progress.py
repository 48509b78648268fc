"""progress() and set_job_id(): a request or job says how far it has got, and which job it made."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from flask_diaglog import DiagLog, inflight, progress, set_job_id
from flask_diaglog.cli import diaglog_cli
from flask_diaglog.testing import capture_events
from tests.conftest import Logs

JSON = {"DIAGLOG_FORMAT": "json"}


def test_progress_writes_a_line_with_its_fields(make_app: Callable[..., Flask], logs: Logs) -> None:
    app = make_app(JSON)

    @app.get("/work")
    def work() -> str:
        progress(3, 7, message="meshing")
        return "ok"

    app.test_client().get("/work")
    (line,) = logs.events("requests", "progress")
    assert line["fraction"] == pytest.approx(3 / 7, abs=1e-3)
    assert (line["step"], line["total"], line["message"]) == (3, 7, "meshing")
    assert line["logger"] == "flask_diaglog.progress"
    assert line["request_id"]


def test_progress_is_an_event_for_signals_and_subscribers(make_app: Callable[..., Flask]) -> None:
    app = make_app()

    @app.get("/work")
    def work() -> str:
        progress(0.25)
        return "ok"

    with capture_events(app) as events:
        app.test_client().get("/work")
    (event,) = events.of("progress")
    assert event.fields["fraction"] == 0.25
    assert "message" not in event.to_dict()


def test_a_tight_loop_writes_the_first_and_the_finished_report_only(
    make_app: Callable[..., Flask], logs: Logs
) -> None:
    app = make_app({**JSON, "DIAGLOG_PROGRESS_INTERVAL": 3600})

    @app.get("/loop")
    def loop() -> str:
        for i in range(1, 10_001):
            progress(i, 10_000)
        return "ok"

    app.test_client().get("/loop")
    assert [r["step"] for r in logs.events("requests", "progress")] == [1, 10_000]


def test_reports_after_the_interval_are_written(make_app: Callable[..., Flask], logs: Logs) -> None:
    app = make_app({**JSON, "DIAGLOG_PROGRESS_INTERVAL": 0})

    @app.get("/steps")
    def steps() -> str:
        for i in range(4):
            progress(i / 4)
        return "ok"

    app.test_client().get("/steps")
    assert [r["fraction"] for r in logs.events("requests", "progress")] == [0, 0.25, 0.5, 0.75]


def test_in_flight_work_shows_its_latest_progress(make_app: Callable[..., Flask]) -> None:
    app = make_app({"DIAGLOG_PROGRESS_INTERVAL": 3600})
    reported, release = threading.Event(), threading.Event()

    @app.get("/slow")
    def slow() -> str:
        progress(0.1, message="first")
        progress(0.6, message="rendering")  # not written (interval), but visible in flight
        reported.set()
        release.wait(10)
        return "ok"

    t = threading.Thread(target=lambda: app.test_client().get("/slow"))
    t.start()
    try:
        assert reported.wait(10)
        (entry,) = inflight(app)
        assert entry["progress"] == {"fraction": 0.6, "message": "rendering"}
    finally:
        release.set()
        t.join(10)


def test_progress_in_background_work_goes_to_jobs_log(
    make_app: Callable[..., Flask], logs: Logs
) -> None:
    app = make_app(JSON, init=False)
    diaglog = DiagLog(app)
    threads: list[threading.Thread] = []

    @app.post("/jobs/<job_id>")
    def start(job_id: str) -> tuple[str, int]:
        threads.append(diaglog.spawn(progress, 1.0, message="done"))
        return "", 202

    app.test_client().post("/jobs/j-7")
    threads[0].join(10)
    (line,) = logs.events("jobs", "progress")
    assert (line["job_id"], line["fraction"], line["message"]) == ("j-7", 1.0, "done")


def test_progress_messages_are_redacted(make_app: Callable[..., Flask], logs: Logs) -> None:
    app = make_app(JSON)

    @app.get("/work")
    def work() -> str:
        progress(0.5, message="calling api with token=s3cr3t-value")
        return "ok"

    app.test_client().get("/work")
    assert "s3cr3t-value" not in logs.text("requests")


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((-0.1,), "0 or more"),
        ((float("nan"),), "finite"),
        (("half",), "finite"),
        ((1, 0), "more than 0"),
        ((True,), "finite"),
    ],
)
def test_bad_values_raise_value_error(args: tuple[Any, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        progress(*args)


def test_progress_outside_a_request_does_nothing(
    make_app: Callable[..., Flask], logs: Logs
) -> None:
    make_app()
    progress(0.5)
    assert "progress" not in logs.text("requests")


def test_set_job_id_tags_later_lines_and_the_end_line(
    make_app: Callable[..., Flask], logs: Logs
) -> None:
    app = make_app(JSON)

    @app.post("/upload")
    def upload() -> tuple[dict[str, str], int]:
        app.logger.info("before the job exists")
        set_job_id("upload-42")
        app.logger.info("stored the upload")
        return {"job_id": "upload-42"}, 201

    app.test_client().post("/upload")
    by_msg = {r["msg"]: r for r in logs.json("requests") if r["event"] == "log"}
    assert by_msg["before the job exists"].get("job_id") is None
    assert by_msg["stored the upload"]["job_id"] == "upload-42"
    (end,) = logs.events("requests", "request_end")
    assert end["job_id"] == "upload-42"


def test_trace_of_a_job_id_finds_the_request_that_created_it(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app()

    @app.post("/upload")
    def upload() -> tuple[str, int]:
        set_job_id("made-here-1")
        return "", 201

    app.test_client().post("/upload")
    out = app.test_cli_runner().invoke(diaglog_cli, ["trace", "made-here-1"]).output
    assert "request_end POST /upload 201" in out


@pytest.mark.parametrize("bad", ["a/b", "", "x" * 129, "with space"])
def test_set_job_id_refuses_an_invalid_id(make_app: Callable[..., Flask], bad: str) -> None:
    app = make_app()
    with app.test_request_context("/"), pytest.raises(ValueError, match="not valid"):
        set_job_id(bad)


def test_set_job_id_outside_a_request_raises() -> None:
    with pytest.raises(RuntimeError, match="needs a request"):
        set_job_id("j-1")
