"""Blinker signals: one per event kind, sent by the app, carrying the record the files get."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Logs
from flask import Flask

from flask_diaglog import DiagLog, Event, guard_job, progress, stage, stats
from flask_diaglog import signals as sig
from flask_diaglog.trail import KINDS

JSON = {"DIAGLOG_FORMAT": "json"}


class Recorder:
    """Collects ``(sender, event)`` for one signal; strong reference, any sender."""

    def __init__(self) -> None:
        self.heard: list[tuple[Any, Event]] = []

    def __call__(self, sender: Any, event: Event, **kw: Any) -> None:
        assert not kw
        self.heard.append((sender, event))


def make_routes(app: Flask) -> None:
    @app.get("/ok")
    def ok() -> dict[str, Any]:
        with stage("parse"):
            app.logger.info("parsed the thing")
        return {"ok": True}

    @app.get("/boom")
    def boom() -> dict[str, Any]:
        raise RuntimeError("kaboom")


def test_every_event_kind_has_a_documented_signal() -> None:
    """Each event kind has its own signal, documented with its sender and keyword."""
    import inspect

    source = inspect.getsource(sig)
    assert set(sig.SIGNALS) == set(KINDS)
    assert len(set(sig.SIGNALS.values())) == len(KINDS)
    for kind, signal in sig.SIGNALS.items():
        assert sig.signal_for(kind) is signal
        name = next(n for n, v in vars(sig).items() if v is signal and not n.startswith("_"))
        block = source.split(f"\n{name} = ")[0].rsplit("\n\n", 1)[-1]
        assert "Sender: the app" in block and "``event``" in block, name
        assert name in sig.__all__


def test_request_signals_carry_the_same_record_as_the_files(
    make_app: Callable[..., Flask], logs: Logs
) -> None:
    """Request signals are sent by the app with the very events written to requests.log."""
    app = make_app(JSON)
    make_routes(app)
    recorders = {k: Recorder() for k in ("request_start", "stage", "log", "request_end")}
    for kind, rec in recorders.items():
        sig.signal_for(kind).connect(rec, app, weak=False)
    try:
        assert app.test_client().get("/ok", headers={"X-Request-ID": "sig-1"}).status_code == 200
    finally:
        for kind, rec in recorders.items():
            sig.signal_for(kind).disconnect(rec, app)
    lines = {r["event"]: r for r in logs.json("requests") if r.get("request_id") == "sig-1"}
    for kind, rec in recorders.items():
        assert len(rec.heard) == 1, kind
        sender, event = rec.heard[0]
        assert sender is app
        assert event.kind == kind and event.request_id == "sig-1"
        line = lines[kind]
        expected = event.to_dict()
        expected.pop("ts")
        line.pop("ts")
        assert line == expected
    assert recorders["log"].heard[0][1].msg == "parsed the thing"


def test_request_error_signal(make_app: Callable[..., Flask], logs: Logs) -> None:
    """request_failed carries the error event with its traceback."""
    app = make_app({**JSON, "PROPAGATE_EXCEPTIONS": False})
    make_routes(app)
    rec = Recorder()
    with sig.request_failed.connected_to(rec, app):
        assert app.test_client().get("/boom").status_code == 500
    assert len(rec.heard) == 1
    sender, event = rec.heard[0]
    assert sender is app
    assert event.fields["error"] == "RuntimeError: kaboom"
    assert event.exc is not None and "kaboom" in event.exc
    assert logs.events("errors", "request_error")[0]["request_id"] == event.request_id


def test_job_signals_from_background_work(make_app: Callable[..., Flask]) -> None:
    """job_started and job_finished are sent for work started with spawn()."""
    diaglog = DiagLog()
    app = make_app(init=False)
    diaglog.init_app(app)
    threads = []

    @app.post("/jobs/<job_id>")
    def start(job_id: str) -> tuple[dict[str, str], int]:
        threads.append(diaglog.spawn(lambda: None))
        return {"job_id": job_id}, 202

    started, finished = Recorder(), Recorder()
    with sig.job_started.connected_to(started, app), sig.job_finished.connected_to(finished, app):
        assert app.test_client().post("/jobs/j-7").status_code == 202
        threads[0].join(10)
    assert [e.job_id for _, e in started.heard] == ["j-7"]
    assert [(s, e.job_id, e.fields["ok"]) for s, e in finished.heard] == [(app, "j-7", True)]


def test_job_rejected_signal_for_a_duplicate(make_app: Callable[..., Flask]) -> None:
    """A second request for an active job gets its 409 and job_rejected is sent by the app."""
    diaglog = DiagLog()
    app = make_app(init=False)
    diaglog.init_app(app)
    release = threading.Event()
    threads = []

    @app.post("/gen/<job_id>")
    @guard_job
    def gen(job_id: str) -> tuple[dict[str, str], int]:
        threads.append(diaglog.spawn(lambda: release.wait(30)))
        return {"job_id": job_id}, 202

    rec = Recorder()
    try:
        with sig.job_rejected.connected_to(rec, app):
            client = app.test_client()
            assert client.post("/gen/dup-1").status_code == 202
            assert client.post("/gen/dup-1").status_code == 409
    finally:
        release.set()
        for t in threads:
            t.join(10)
    [(sender, event)] = rec.heard
    assert sender is app and event.kind == "job_rejected" and event.job_id == "dup-1"


def test_each_kind_goes_to_its_signal_only(make_app: Callable[..., Flask]) -> None:
    """Real work producing every kind (also job_rejected and hang): each signal hears its own."""
    app = make_app({"DIAGLOG_HANG_AFTER": 0.1, "PROPAGATE_EXCEPTIONS": False}, init=False)
    diaglog = DiagLog(app)
    make_routes(app)
    release = threading.Event()
    threads: list[threading.Thread] = []
    recorders = {k: Recorder() for k in KINDS}

    @app.post("/gen/<job_id>")
    @guard_job
    def gen(job_id: str) -> tuple[dict[str, str], int]:
        threads.append(diaglog.spawn(lambda: release.wait(30)))
        return {"job_id": job_id}, 202

    @app.get("/halfway")
    def halfway() -> str:
        progress(0.5, message="half")
        return "half"

    @app.get("/stuck")
    def stuck() -> str:
        deadline = time.monotonic() + 10  # held until the watchdog has reported it
        while not recorders["hang"].heard and time.monotonic() < deadline:
            time.sleep(0.01)
        return "unstuck"

    for k, rec in recorders.items():
        sig.signal_for(k).connect(rec, app, weak=False)
    try:
        client = app.test_client()
        assert client.get("/ok").status_code == 200
        assert client.get("/boom").status_code == 500
        assert client.post("/gen/each-1").status_code == 202
        assert client.post("/gen/each-1").status_code == 409
        release.set()
        threads[0].join(10)
        assert client.get("/halfway").status_code == 200
        assert client.get("/stuck").status_code == 200
    finally:
        release.set()
        for k, rec in recorders.items():
            sig.signal_for(k).disconnect(rec, app)
    heard = {k: sorted({(s is app, e.kind) for s, e in rec.heard}) for k, rec in recorders.items()}
    assert heard == {k: [(True, k)] for k in KINDS}


def test_receivers_for_another_app_do_not_hear(make_app: Callable[..., Flask]) -> None:
    """A receiver connected for one app is not called for another app's events."""
    app, other = make_app(), Flask("other")
    rec = Recorder()
    with sig.diaglog_request_started.connected_to(rec, other):
        app.test_client().get("/nothing")
    assert rec.heard == []


def test_a_raising_receiver_never_breaks_the_request(
    make_app: Callable[..., Flask], logs: Logs, capsys: pytest.CaptureFixture[str]
) -> None:
    """A raising receiver is skipped, counted every time and reported once; others still hear."""
    app = make_app(JSON)
    make_routes(app)
    good = Recorder()

    def bad(sender: Any, event: Event, **_: Any) -> None:
        raise ValueError("receiver bug")

    with (
        sig.diaglog_request_finished.connected_to(bad, app),
        sig.diaglog_request_finished.connected_to(good, app),
    ):
        client = app.test_client()
        for _ in range(3):
            assert client.get("/ok").status_code == 200
    assert len(good.heard) == 3
    failures = stats(app)["sink_failures"]
    [(name, count)] = failures.items()
    assert count == 3
    assert "diaglog-request-finished" in name and "bad" in name
    err = capsys.readouterr().err
    assert err.count("receiver bug") == 1
    reported = [r for r in logs.json("errors") if "further failures are counted" in r["msg"]]
    assert len(reported) == 1
    assert "ValueError: receiver bug" in reported[0]["exc"]


def test_logging_inside_a_receiver_does_not_recurse(
    make_app: Callable[..., Flask], logs: Logs
) -> None:
    """A receiver's own log line reaches the files but is not signalled again."""
    app = make_app(JSON)
    make_routes(app)
    heard: list[Event] = []

    def chatty(sender: Flask, event: Event, **_: Any) -> None:
        heard.append(event)
        sender.logger.warning("heard %s", event.kind)

    with sig.log_record.connected_to(chatty, app):
        assert app.test_client().get("/ok").status_code == 200
    assert [e.msg for e in heard] == ["parsed the thing"]
    assert "heard log" in [r["msg"] for r in logs.json("requests")]


def test_old_signal_name_warns_and_gives_the_renamed_signal() -> None:
    """Importing the old name request_finished warns and returns diaglog_request_finished."""
    with pytest.warns(DeprecationWarning, match="diaglog_request_finished"):
        from flask_diaglog.signals import request_finished
    assert request_finished is sig.diaglog_request_finished
