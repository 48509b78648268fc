"""Blinker signals: one per event kind, sent by the app, carrying the record the files get."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Logs
from flask import Flask

from flask_diaglog import DiagLog, Event, guard_job, progress, stage, stats
from flask_diaglog import signals as sig
from flask_diaglog.files.render import plain_line
from flask_diaglog.record import Recorder as RecorderCls
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


# -- which receivers are called: blinker's rules, with the receivers resolved once per change --


class Sender:
    """A sender like the app: weakly referable, hashed by identity."""


def _recorder_for(sender: Any) -> RecorderCls:
    return RecorderCls(files=None, render=plain_line, sender=sender)


def _called(rec: RecorderCls, signal: Any, sender: Any, heard: list[str]) -> list[str]:
    """Send one event through the recorder; the names heard, checked against blinker's own
    choice (receivers_for) made just before."""
    expected = sorted(getattr(r, "__name__", "?") for r in signal.receivers_for(sender))
    heard.clear()
    rec.record("request_end", None, logging.INFO, "request_end GET / 200", ("GET", "/"))
    assert sorted(heard) == expected
    return sorted(heard)


def test_receivers_are_chosen_as_blinker_chooses_them_after_every_change() -> None:
    """Connected to the app or to ANY, connected after the first send, disconnected, connected
    for another sender, weakly connected and gone: each send calls what blinker would."""
    signal = sig.diaglog_request_finished
    app, other = Sender(), Sender()
    rec = _recorder_for(app)
    heard: list[str] = []

    def named(name: str) -> Callable[..., None]:
        def receiver(sender: Any, event: Event, **_: Any) -> None:
            assert sender is app and event.kind == "request_end"
            heard.append(name)

        receiver.__name__ = name
        return receiver

    a, b, c = named("a"), named("b"), named("c")
    with signal.connected_to(a, app):
        assert _called(rec, signal, app, heard) == ["a"]
        assert _called(rec, signal, app, heard) == ["a"]  # the resolved receivers, kept
        with signal.connected_to(b):  # ANY, connected after a send
            assert _called(rec, signal, app, heard) == ["a", "b"]
            with signal.connected_to(c, other):  # another sender's
                assert _called(rec, signal, app, heard) == ["a", "b"]
        assert _called(rec, signal, app, heard) == ["a"]  # b disconnected
        weak = named("weak")
        signal.connect(weak, app)  # weakly: goes with the function
        assert _called(rec, signal, app, heard) == ["a", "weak"]
        del weak
        gc.collect()
        assert _called(rec, signal, app, heard) == ["a"]
    assert _called(rec, signal, app, heard) == []
    assert heard == []


def test_a_weakly_connected_method_goes_with_its_object() -> None:
    """A bound method connected weakly is called while its object lives, not after."""
    signal = sig.diaglog_request_finished
    app = Sender()
    rec = _recorder_for(app)
    heard: list[str] = []

    class Listener:
        def on_end(self, sender: Any, event: Event, **_: Any) -> None:
            heard.append("on_end")

    listener = Listener()
    signal.connect(listener.on_end, app)
    assert _called(rec, signal, app, heard) == ["on_end"]
    del listener
    gc.collect()
    assert _called(rec, signal, app, heard) == []


def test_two_apps_hear_their_own_receivers_and_any() -> None:
    """Each app's events go to its own receivers and to those connected to ANY, never to the
    other app's."""
    signal = sig.diaglog_request_finished
    one, two = Sender(), Sender()
    rec_one, rec_two = _recorder_for(one), _recorder_for(two)
    heard: list[tuple[str, Any]] = []

    def for_one(sender: Any, event: Event, **_: Any) -> None:
        heard.append(("one", sender))

    def for_two(sender: Any, event: Event, **_: Any) -> None:
        heard.append(("two", sender))

    def for_any(sender: Any, event: Event, **_: Any) -> None:
        heard.append(("any", sender))

    with (
        signal.connected_to(for_one, one),
        signal.connected_to(for_two, two),
        signal.connected_to(for_any),
    ):
        for _ in range(2):
            for rec in (rec_one, rec_two, rec_one):
                rec.record("request_end", None, logging.INFO, "end", ("GET", "/"))
    assert sorted(heard, key=lambda h: (h[0], id(h[1]))) == sorted(
        [("one", one)] * 4 + [("two", two)] * 2 + [("any", one)] * 4 + [("any", two)] * 2,
        key=lambda h: (h[0], id(h[1])),
    )


def test_a_receiver_disconnected_during_a_send_is_not_called_for_it() -> None:
    """As in blinker, a receiver disconnected by an earlier receiver of the same send is skipped
    (here each disconnects the other: whichever runs first, only it is called); one connected
    during a send is called from the next send on."""
    signal = sig.diaglog_request_finished
    app = Sender()
    rec = _recorder_for(app)
    heard: list[str] = []

    def first(sender: Any, event: Event, **_: Any) -> None:
        heard.append("first")
        signal.disconnect(second, app)
        signal.connect(late, app, weak=False)

    def second(sender: Any, event: Event, **_: Any) -> None:
        heard.append("second")
        signal.disconnect(first, app)
        signal.connect(late, app, weak=False)

    def late(sender: Any, event: Event, **_: Any) -> None:
        heard.append("late")

    for _ in range(2):  # the first send resolves the receivers, the second uses them kept
        signal.connect(first, app, weak=False)
        signal.connect(second, app, weak=False)
        try:
            heard.clear()
            rec.record("request_end", None, logging.INFO, "end", ("GET", "/"))
            assert heard in (["first"], ["second"])
            survivor = heard[0]
            heard.clear()
            rec.record("request_end", None, logging.INFO, "end", ("GET", "/"))
            assert sorted(heard) == sorted([survivor, "late"])
        finally:
            for r in (first, second, late):
                signal.disconnect(r, app)


def test_a_new_sender_at_a_gone_senders_address_does_not_get_its_receivers() -> None:
    """Receivers resolved for a sender that went are not called for a new sender that happens
    to get its id."""
    signal = sig.diaglog_request_finished
    heard: list[str] = []

    def receiver(sender: Any, event: Event, **_: Any) -> None:
        heard.append("called")

    gone = Sender()
    signal.connect(receiver, gone, weak=False)
    try:
        rec = _recorder_for(gone)
        rec.record("request_end", None, logging.INFO, "end", ("GET", "/"))
        assert heard == ["called"]
        old_id = id(gone)
        del gone, rec
        gc.collect()
        candidates = [Sender() for _ in range(1000)]
        reused = [s for s in candidates if id(s) == old_id]
        assert reused, "no new sender at the old address: the test proves nothing"
        heard.clear()
        _recorder_for(reused[0]).record("request_end", None, logging.INFO, "end", ("GET", "/"))
        assert heard == []
    finally:
        signal.disconnect(receiver)


def test_a_muted_signal_calls_no_receiver(make_app: Callable[..., Flask]) -> None:
    """blinker's ``Signal.muted()`` holds for diaglog's sends as for blinker's own."""
    app = make_app()
    got: list[str] = []

    def receiver(sender: Flask, event: Event, **kw: Any) -> None:
        got.append(event.kind)

    end = sig.signal_for("request_end")
    end.connect(receiver, app)
    with end.muted():
        app.test_client().get("/")
    assert got == []
    app.test_client().get("/")
    assert got == ["request_end"]
