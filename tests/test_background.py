"""Background work: spawn and wrap carry the request's ids and write job lines to jobs.log."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from flask import Flask, current_app

from flask_diaglog import DiagLog, current_job_id, current_request_id


def test_spawn_carries_ids_and_writes_job_lines(
    make_app: Callable[..., Flask], logs: object
) -> None:
    """spawn runs fn in a thread with the request and job ids; job_start/job_end go to jobs.log."""
    app = make_app({"DIAGLOG_FORMAT": "json"}, init=False)
    diaglog = DiagLog(app)
    seen: dict[str, object] = {}
    threads: list[threading.Thread] = []

    def generate(job_id: str, *, quality: str) -> None:
        seen.update(
            request_id=current_request_id(),
            job_id=current_job_id(),
            arg=job_id,
            quality=quality,
            app=current_app.name,
        )
        logging.getLogger(app.import_name.split(".")[0] + ".worker").info("working")

    @app.post("/jobs/<job_id>/generate")
    def start(job_id: str) -> tuple[dict[str, str], int]:
        threads.append(diaglog.spawn(generate, job_id, quality="high"))
        return {"job_id": job_id}, 202

    r = app.test_client().post("/jobs/J-5/generate", headers={"X-Request-ID": "R-5"})
    assert r.status_code == 202
    threads[0].join(10)
    assert seen == {
        "request_id": "R-5",
        "job_id": "J-5",
        "arg": "J-5",
        "quality": "high",
        "app": app.name,
    }
    records = logs.json("jobs")  # type: ignore[attr-defined]
    assert [r["event"] for r in records] == ["job_start", "log", "job_end"]
    assert all(r["request_id"] == "R-5" and r["job_id"] == "J-5" for r in records)
    assert records[1]["msg"] == "working"
    end = records[2]
    assert end["ok"] is True and end["name"].endswith("generate")
    assert isinstance(end["duration_ms"], float)
    assert "working" not in logs.text("requests")  # type: ignore[attr-defined]


def test_exception_in_spawned_work_is_logged_with_traceback(
    make_app: Callable[..., Flask], logs: object
) -> None:
    """An exception in background work lands in jobs.log and errors.log with its traceback."""
    app = make_app({"DIAGLOG_FORMAT": "json"}, init=False)
    diaglog = DiagLog(app)
    threads: list[threading.Thread] = []

    def explode() -> None:
        raise OSError("disk full while writing mesh")

    @app.post("/jobs/<job_id>")
    def start(job_id: str) -> tuple[str, int]:
        threads.append(diaglog.spawn(explode))
        return "", 202

    app.test_client().post("/jobs/J-6")
    threads[0].join(10)
    end = logs.events("jobs", "job_end")  # type: ignore[attr-defined]
    assert len(end) == 1
    assert end[0]["ok"] is False and end[0]["level"] == "ERROR"
    assert end[0]["error"] == "OSError: disk full while writing mesh"
    assert "Traceback" in end[0]["exc"] and "in explode" in end[0]["exc"]
    errors = logs.json("errors")  # type: ignore[attr-defined]
    assert [e["event"] for e in errors] == ["job_end"] and errors[0]["job_id"] == "J-6"


def test_wrap_for_executors(make_app: Callable[..., Flask], logs: object) -> None:
    """wrap(fn) returns a callable that carries the ids into an executor and re-raises errors."""
    app = make_app({"DIAGLOG_FORMAT": "json"}, init=False)
    diaglog = DiagLog(app)
    pool = ThreadPoolExecutor(2)
    results: list[object] = []

    def ids(n: int) -> tuple[str | None, str | None, int]:
        return current_request_id(), current_job_id(), n

    def fail() -> None:
        raise ValueError("bad input")

    @app.post("/jobs/<job_id>")
    def start(job_id: str) -> str:
        results.append(pool.submit(diaglog.wrap(ids), 3).result(10))
        future = pool.submit(diaglog.wrap(fail))
        with pytest.raises(ValueError):
            future.result(10)
        return "ok"

    app.test_client().post("/jobs/W1", headers={"X-Request-ID": "RW"})
    pool.shutdown()
    assert results == [("RW", "W1", 3)]
    ends = logs.events("jobs", "job_end")  # type: ignore[attr-defined]
    assert [e["ok"] for e in ends] == [True, False]


def test_spawn_outside_request_in_app_context(make_app: Callable[..., Flask], logs: object) -> None:
    """spawn in an app context (no request) still logs the job, with no ids."""
    app = make_app({"DIAGLOG_FORMAT": "json"}, init=False)
    diaglog = DiagLog(app)
    with app.app_context():
        diaglog.spawn(lambda: None).join(10)
    kinds = [r["event"] for r in logs.json("jobs")]  # type: ignore[attr-defined]
    assert kinds == ["job_start", "job_end"]


def test_spawn_outside_any_context_uses_the_one_app_of_its_diaglog(
    make_app: Callable[..., Flask], logs: object
) -> None:
    """``DiagLog(app)`` then ``spawn`` at module level or in a script (no app context): the
    instance's only app records the job, and the work runs in its app context."""
    app = make_app({"DIAGLOG_FORMAT": "json"}, init=False)
    diaglog = DiagLog(app)
    seen: list[str] = []
    diaglog.spawn(lambda: seen.append(current_app.name)).join(10)
    diaglog.wrap(lambda: None)()
    assert seen == [app.name]
    kinds = [r["event"] for r in logs.json("jobs")]  # type: ignore[attr-defined]
    assert kinds == ["job_start", "job_end", "job_start", "job_end"]


def test_spawn_outside_any_context_with_two_apps_picks_neither(tmp_path: Path) -> None:
    """With two apps on one instance and no context, no app is guessed: the work just runs."""
    diaglog = DiagLog()
    apps = [Flask(name) for name in ("one", "two")]  # both alive: the instance holds them weakly
    for app in apps:
        app.config["DIAGLOG_LOG_DIR"] = str(tmp_path / app.name)
        diaglog.init_app(app)
    out: list[int] = []
    diaglog.spawn(out.append, 1).join(10)
    assert out == [1]
    for name in ("one", "two"):
        path = tmp_path / name / "jobs.log"
        assert (path.read_text() if path.exists() else "") == ""


def test_work_an_excluded_path_starts_is_logged_as_a_job_without_its_ids(
    make_app: Callable[..., Flask], logs: object
) -> None:
    """A request under DIAGLOG_EXCLUDE writes no line; the background work it starts does, as
    a job of its own (no request id from the excluded request)."""
    app = make_app({"DIAGLOG_FORMAT": "json", "DIAGLOG_EXCLUDE": "/healthz"}, init=False)
    diaglog = DiagLog(app)

    @app.get("/healthz")
    def healthz() -> str:
        diaglog.spawn(lambda: None).join(10)
        return "ok"

    assert app.test_client().get("/healthz").text == "ok"
    assert logs.json("requests") == []  # type: ignore[attr-defined]
    jobs = logs.json("jobs")  # type: ignore[attr-defined]
    assert [r["event"] for r in jobs] == ["job_start", "job_end"]
    assert all("request_id" not in r for r in jobs)


def test_spawn_without_diaglog_just_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """spawn with no registered app runs the function in a thread and nothing is swallowed."""
    diaglog = DiagLog()
    out: list[int] = []
    diaglog.spawn(out.append, 7).join(10)
    assert out == [7]


def test_spawn_thread_is_not_a_daemon(make_app: Callable[..., Flask]) -> None:
    """Spawned work is a non-daemon thread, so a graceful shutdown waits for it."""
    app = make_app(init=False)
    diaglog = DiagLog(app)
    with app.app_context():
        t = diaglog.spawn(lambda: None)
        t.join(10)
    assert t.daemon is False


def test_wrapped_callable_never_run_frees_its_job(make_app: Callable[..., Flask]) -> None:
    """A guarded job held by wrap() is freed when the wrapped callable is dropped unrun."""
    import gc

    from flask_diaglog import guard_job

    app = make_app(init=False)
    diaglog = DiagLog(app)
    kept: list[object] = []

    @app.post("/jobs/<job_id>")
    @guard_job
    def start(job_id: str) -> tuple[str, int]:
        kept.append(diaglog.wrap(lambda: None))
        return "", 202

    client = app.test_client()
    assert client.post("/jobs/G1").status_code == 202
    assert client.post("/jobs/G1").status_code == 409  # held by the unrun callable
    kept.clear()
    gc.collect()
    assert client.post("/jobs/G1").status_code == 202
