"""The live Socket.IO bridge, in process, with Flask-SocketIO's real test client."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import Logs
from flask import Flask, request
from flask.testing import FlaskClient
from flask_socketio import SocketIO, SocketIOTestClient

from flask_diaglog import DiagLog, Event, stage
from flask_diaglog import live as live_mod
from flask_diaglog.config import ConfigError
from flask_diaglog.live import LiveBridge, get_bridge
from flask_diaglog.signals import stage_finished
from flask_diaglog.testing import capture_events

NS = "/diaglog"
TOKEN = "s3cret-token-for-live"
LIVE = {"DIAGLOG_LIVE": True, "DIAGLOG_LIVE_TOKEN": TOKEN, "DIAGLOG_FORMAT": "json"}


class LiveApp:
    """An app with SocketIO + DiagLog, its clients, and cleanup of everything it opened."""

    def __init__(self, make_app: Callable[..., Flask]) -> None:
        self.make_app = make_app
        self.clients: list[SocketIOTestClient] = []
        self.bridges: list[LiveBridge] = []
        self.servers: list[SocketIO] = []

    def __call__(
        self, config: dict[str, Any] | None = None, *, pass_socketio: bool = False, **kw: Any
    ) -> tuple[Flask, SocketIO]:
        app = self.make_app(config, init=False)
        app.config["SECRET_KEY"] = "test"
        socketio = SocketIO(app, async_mode="threading", **kw.pop("socketio_kw", {}))
        self.servers.append(socketio)
        DiagLog(app, socketio=socketio if pass_socketio else None, **kw)
        bridge = get_bridge(app)
        if bridge is not None:
            self.bridges.append(bridge)

        @app.get("/work")
        def work() -> dict[str, Any]:
            with stage("compute"):
                app.logger.info("computing %s", request.args.get("n", "1"))
            return {"ok": True}

        @app.get("/levels")
        def levels() -> dict[str, Any]:
            app.logger.debug("debug line")
            app.logger.info("info line")
            app.logger.warning("warning line")
            app.logger.error("error line")
            return {"ok": True}

        return app, socketio

    def client(
        self,
        app: Flask,
        socketio: SocketIO,
        auth: Any = ...,
        flask_client: FlaskClient | None = None,
        **kw: Any,
    ) -> SocketIOTestClient:
        sc = socketio.test_client(
            app,
            namespace=NS,
            auth={"token": TOKEN} if auth is ... else auth,
            flask_test_client=flask_client or app.test_client(),
            **kw,
        )
        self.clients.append(sc)
        return sc

    def close(self) -> None:
        for sc in self.clients:
            for ns in list(sc.connected):
                if sc.is_connected(ns):
                    sc.disconnect(ns)
        for bridge in self.bridges:
            bridge.close()
        # Engine.IO's ping and service threads outlive the test otherwise, and log into whatever
        # app a later test has made (with DIAGLOG_LOGGERS=root, into its files).
        for socketio in self.servers:
            eio = socketio.server.eio
            for sock in list(eio.sockets.values()):
                sock.close(wait=False, abort=True)
            eio.shutdown()


@pytest.fixture
def live_app(make_app: Callable[..., Flask]) -> Iterator[LiveApp]:
    factory = LiveApp(make_app)
    yield factory
    factory.close()


def received(sc: SocketIOTestClient, app: Flask) -> list[dict[str, Any]]:
    """The diaglog events the client got, after the bridge emitted everything queued."""
    bridge = get_bridge(app)
    assert bridge is not None
    assert bridge.flush(10)
    out = []
    for pkt in sc.get_received(NS):
        assert pkt["name"] == "event"
        [data] = pkt["args"]
        out.append(data)
    return out


def subscribe(sc: SocketIOTestClient, **what: Any) -> Any:
    return sc.emit("subscribe", what, namespace=NS, callback=True)


# -- events flow ------------------------------------------------------------------------------


def test_a_subscribed_client_gets_its_jobs_events(live_app: LiveApp) -> None:
    """A client subscribed to a job receives that job's events, each equal to Event.to_dict()."""
    app, socketio = live_app(LIVE)
    client = app.test_client()
    sc = live_app.client(app, socketio, flask_client=client)
    assert sc.is_connected(NS)
    assert subscribe(sc, job_id="job-1") == {"ok": True, "rooms": ["job:job-1"]}
    with capture_events(app) as events:
        resp = client.get("/work", headers={"X-Job-ID": "job-1"})
    assert resp.status_code == 200
    got = received(sc, app)
    assert [d["event"] for d in got] == ["request_start", "log", "stage", "request_end"]
    assert got == events.dicts()
    assert {d["job_id"] for d in got} == {"job-1"}
    assert got[2]["stage"] == "compute"


def test_clients_only_get_the_job_they_subscribed_to(live_app: LiveApp) -> None:
    """Two clients on two jobs: each hears only its own job; unsubscribed events go nowhere."""
    app, socketio = live_app(LIVE)
    a, b = live_app.client(app, socketio), live_app.client(app, socketio)
    subscribe(a, job_id="a")
    subscribe(b, job_id="b")
    client = app.test_client()
    for job in ("a", "b", "c"):
        client.get("/work", headers={"X-Job-ID": job})
    client.get("/work")
    assert {d["job_id"] for d in received(a, app)} == {"a"}
    assert {d["job_id"] for d in received(b, app)} == {"b"}


def test_request_and_all_subscriptions(live_app: LiveApp) -> None:
    """Subscribing by request id gives that request; ``all`` gives everything."""
    app, socketio = live_app(LIVE)
    by_req, everything = live_app.client(app, socketio), live_app.client(app, socketio)
    subscribe(by_req, request_id="req-42")
    subscribe(everything, all=True)
    client = app.test_client()
    client.get("/work", headers={"X-Request-ID": "req-41"})
    client.get("/work", headers={"X-Request-ID": "req-42"})
    assert {d["request_id"] for d in received(by_req, app)} == {"req-42"}
    assert len(received(everything, app)) == 8


def test_log_subscription_by_level(live_app: LiveApp) -> None:
    """A WARNING subscriber gets only log records at WARNING and above, until it unsubscribes."""
    app, socketio = live_app({**LIVE, "DIAGLOG_LEVEL": "DEBUG"})
    sc = live_app.client(app, socketio)
    assert subscribe(sc, level="warning") == {"ok": True, "rooms": ["log:WARNING"]}
    assert subscribe(sc, level=30) == {"ok": True, "rooms": ["log:WARNING"]}  # or its number
    app.test_client().get("/levels")
    got = received(sc, app)
    assert [(d["event"], d["level"], d["msg"]) for d in got] == [
        ("log", "WARNING", "warning line"),
        ("log", "ERROR", "error line"),
    ]
    assert sc.emit("unsubscribe", {"level": "WARNING"}, namespace=NS, callback=True)["ok"]
    app.test_client().get("/levels")
    assert received(sc, app) == []


@pytest.mark.parametrize(
    "payload",
    [
        None,
        "job-1",
        {},
        {"job_id": "bad id!"},
        {"level": "LOUD"},
        {"request_id": 5},
        {"level": [1]},
        {"level": {}},
        {"level": True},
        {"level": 12.5},
        {"all": "yes"},
        {"all": 1},
        {"job_id": 5.5},
    ],
)
def test_invalid_subscriptions_are_answered_not_raised(live_app: LiveApp, payload: Any) -> None:
    """A malformed subscribe gets ``ok: false`` with a reason, and the client stays connected."""
    app, socketio = live_app(LIVE)
    sc = live_app.client(app, socketio)
    answer = sc.emit("subscribe", payload, namespace=NS, callback=True)
    assert answer["ok"] is False and answer["error"]
    if isinstance(payload, dict) and "all" in payload:
        assert answer["error"] == "all must be true"
    assert sc.is_connected(NS)


def test_a_number_job_id_subscribes_as_the_guard_takes_it(live_app: LiveApp) -> None:
    """``{"job_id": 5}`` is the job ``"5"``, as a JSON body's ``5`` is for the job guard."""
    app, socketio = live_app(LIVE)
    sc = live_app.client(app, socketio)
    answer = sc.emit("subscribe", {"job_id": 5}, namespace=NS, callback=True)
    assert answer == {"ok": True, "rooms": ["job:5"]}


def test_socketio_passed_explicitly_and_initialised_later(make_app: Callable[..., Flask]) -> None:
    """DiagLog(app, socketio=SocketIO()) works when SocketIO.init_app runs afterwards."""
    app = make_app(LIVE, init=False)
    socketio = SocketIO()
    DiagLog(app, socketio=socketio)
    socketio.init_app(app, async_mode="threading")

    @app.get("/hi")
    def hi() -> str:
        return "hi"

    sc = socketio.test_client(app, namespace=NS, auth={"token": TOKEN})
    bridge = get_bridge(app)
    assert bridge is not None
    try:
        subscribe(sc, all=True)
        app.test_client().get("/hi")
        assert [d["event"] for d in received(sc, app)] == ["request_start", "request_end"]
    finally:
        sc.disconnect(NS)
        bridge.close()


def test_socketio_transport_requests_are_not_logged(live_app: LiveApp, logs: Logs) -> None:
    """Engine.IO long polls and websocket upgrades are excluded from the request trail."""
    app, _ = live_app(LIVE)
    client = app.test_client()
    client.get("/socket.io/?EIO=4&transport=polling")
    client.get("/work")
    assert [r["path"] for r in logs.events("requests", "request_end")] == ["/work"]


def test_fields_json_cannot_encode_are_sent_as_text(live_app: LiveApp) -> None:
    """An event field that is not JSON (here a set a receiver added) goes out as its string form."""
    app, socketio = live_app(LIVE)
    sc = live_app.client(app, socketio)
    subscribe(sc, all=True)

    def annotate(sender: Flask, event: Event, **_: Any) -> None:
        event.fields["odd"] = {3}

    with stage_finished.connected_to(annotate, app):
        assert app.test_client().get("/work").status_code == 200
    [data] = [d for d in received(sc, app) if d["event"] == "stage"]
    assert data["odd"] == "{3}" and data["stage"] == "compute"
    bridge = get_bridge(app)
    assert bridge is not None and bridge.failed == 0


# -- test mode --------------------------------------------------------------------------------


def test_nothing_is_emitted_in_test_mode(
    live_app: LiveApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With TESTING on, a connected, subscribed client hears nothing and no task is started."""
    started: list[Any] = []
    original = SocketIO.start_background_task

    def spy(self: SocketIO, target: Any, *args: Any, **kwargs: Any) -> Any:
        started.append(target)
        return original(self, target, *args, **kwargs)

    monkeypatch.setattr(SocketIO, "start_background_task", spy)
    app, socketio = live_app({"DIAGLOG_LIVE_TOKEN": TOKEN})
    assert app.config["TESTING"] is True
    client = app.test_client()
    sc = live_app.client(app, socketio, flask_client=client)
    subscribe(sc, all=True)
    client.get("/work", headers={"X-Job-ID": "quiet"})
    bridge = get_bridge(app)
    assert bridge is not None
    assert sc.get_received(NS) == []
    assert started == []
    assert bridge.stats() == {"queued": 0, "emitted": 0, "dropped": 0, "failed": 0}


def test_testing_env_var_also_turns_it_off(
    live_app: LiveApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TESTING=1 in the environment (app.config TESTING off) keeps the bridge quiet too."""
    monkeypatch.setenv("TESTING", "1")
    app, socketio = live_app({"TESTING": False, "DIAGLOG_LIVE_TOKEN": TOKEN})
    sc = live_app.client(app, socketio)
    subscribe(sc, all=True)
    app.test_client().get("/work")
    assert sc.get_received(NS) == []


def test_live_false_turns_it_off_outside_test_mode(live_app: LiveApp) -> None:
    """DIAGLOG_LIVE=False keeps the bridge off even when not testing."""
    app, socketio = live_app({"TESTING": False, "DIAGLOG_LIVE": False, "DIAGLOG_LIVE_TOKEN": TOKEN})
    sc = live_app.client(app, socketio)
    subscribe(sc, all=True)
    assert app.test_client().get("/work").status_code == 200
    bridge = get_bridge(app)
    assert bridge is not None
    assert bridge.stats() == {"queued": 0, "emitted": 0, "dropped": 0, "failed": 0}
    assert sc.get_received(NS) == []


def test_live_queue_is_not_installed_in_test_mode(live_app: LiveApp) -> None:
    """DIAGLOG_LIVE_QUEUE is left alone in test mode and installed when live is forced."""
    from socketio import RedisManager

    app, socketio = live_app({**LIVE, "DIAGLOG_LIVE": None, "DIAGLOG_LIVE_QUEUE": "redis://x:1"})
    assert not isinstance(socketio.server.manager, RedisManager)
    assert live_app.client(app, socketio).is_connected(NS)
    _, socketio2 = live_app({**LIVE, "DIAGLOG_LIVE_QUEUE": "redis://127.0.0.1:1/0"})
    assert isinstance(socketio2.server.manager, RedisManager)
    assert socketio2.server.manager.redis_url == "redis://127.0.0.1:1/0"


def test_live_true_without_socketio_is_a_config_error(make_app: Callable[..., Flask]) -> None:
    """DIAGLOG_LIVE=True with no SocketIO anywhere stops startup with a clear message."""
    with pytest.raises(ConfigError, match="DIAGLOG_LIVE is on but there is no Flask-SocketIO"):
        make_app({"DIAGLOG_LIVE": True})


# -- auth -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "query", "ok"),
    [
        (None, None, False),
        ({}, None, False),
        ({"token": "wrong"}, None, False),
        ({"token": TOKEN[:-1]}, None, False),
        ({"token": 12345}, None, False),
        ("not-a-dict", None, False),
        (None, "token=wrong", False),
        ({"token": TOKEN}, None, True),
        (None, f"token={TOKEN}", True),
    ],
)
def test_token_auth(live_app: LiveApp, auth: Any, query: str | None, ok: bool) -> None:
    """Only the configured token (auth payload, or token= in the query string) gets in."""
    app, socketio = live_app(LIVE)
    sc = live_app.client(app, socketio, auth=auth, query_string=query)
    assert sc.is_connected(NS) is ok


def test_without_token_or_callback_everybody_is_refused(live_app: LiveApp) -> None:
    """No DIAGLOG_LIVE_TOKEN and no live_auth: every client is refused."""
    app, socketio = live_app({"DIAGLOG_LIVE": True})
    assert not live_app.client(app, socketio, auth={"token": ""}).is_connected(NS)
    assert not live_app.client(app, socketio, auth=None).is_connected(NS)


def test_auth_callback_decides(live_app: LiveApp) -> None:
    """live_auth gets the auth payload, can read the handshake request, and decides."""
    seen: list[Any] = []

    def allow(auth: Any) -> bool:
        seen.append((auth, request.headers.get("X-Team")))
        return request.headers.get("X-Team") == "ops"

    app, socketio = live_app({"DIAGLOG_LIVE": True}, live_auth=allow)
    yes = live_app.client(app, socketio, auth={"user": "ann"}, headers={"X-Team": "ops"})
    no = live_app.client(app, socketio, auth={"user": "bob"}, headers={"X-Team": "dev"})
    assert yes.is_connected(NS) and not no.is_connected(NS)
    assert seen == [({"user": "ann"}, "ops"), ({"user": "bob"}, "dev")]


def test_token_or_callback_either_admits(live_app: LiveApp) -> None:
    """With both configured, the token admits; without it the callback still decides."""
    app, socketio = live_app(LIVE, live_auth=lambda auth: False)
    assert live_app.client(app, socketio).is_connected(NS)
    assert not live_app.client(app, socketio, auth={"token": "nope"}).is_connected(NS)


def test_the_live_stream_carries_redacted_values_only(live_app: LiveApp) -> None:
    """Secrets in the query string and in log messages never reach a live client."""
    app, socketio = live_app(LIVE)

    @app.get("/login")
    def login() -> str:
        app.logger.warning("login with password=hunter2 api_key=abc123")
        raise RuntimeError("db password=hunter2 rejected")

    app.config["PROPAGATE_EXCEPTIONS"] = False
    sc = live_app.client(app, socketio)
    subscribe(sc, all=True)
    app.test_client().get(
        "/login?token=qs-secret&x=1", headers={"Authorization": "Bearer abcdefghijk"}
    )
    got = received(sc, app)
    assert {d["event"] for d in got} >= {"request_start", "log", "request_error", "request_end"}
    text = repr(got)
    for secret in ("hunter2", "abc123", "qs-secret", "abcdefghijk"):
        assert secret not in text
    assert "[REDACTED]" in text


# -- never blocks, never raises, never recurses -----------------------------------------------


def test_a_failing_emit_never_reaches_the_request(
    live_app: LiveApp, logs: Logs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When emitting raises, requests still succeed; failures are counted and reported once."""
    app, socketio = live_app(LIVE)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("socket layer down")

    monkeypatch.setattr(socketio, "emit", broken)
    client = app.test_client()
    for _ in range(3):
        assert client.get("/work").status_code == 200
    bridge = get_bridge(app)
    assert bridge is not None and bridge.flush(10)
    assert bridge.failed == 12 and bridge.emitted == 0
    reported = [r for r in logs.json("errors") if "emitting a live event failed" in r["msg"]]
    assert len(reported) == 1 and "socket layer down" in reported[0]["exc"]


def test_a_full_queue_drops_and_counts_without_blocking(
    live_app: LiveApp, logs: Logs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the emitter stuck, a full queue drops and counts events; requests never wait."""
    monkeypatch.setattr(live_mod, "QUEUE_SIZE", 3)
    app, socketio = live_app(LIVE)
    gate, entered = threading.Event(), threading.Event()
    original = socketio.emit

    def stuck(*args: Any, **kwargs: Any) -> None:
        entered.set()
        assert gate.wait(30)
        original(*args, **kwargs)

    monkeypatch.setattr(socketio, "emit", stuck)
    sc = live_app.client(app, socketio)
    subscribe(sc, all=True)
    client = app.test_client()
    assert client.get("/work").status_code == 200  # 4 events: 1 being emitted, 3 queued
    assert entered.wait(10)
    for _ in range(5):
        assert client.get("/work").status_code == 200  # 20 more events: hardly any room left
    bridge = get_bridge(app)
    assert bridge is not None
    assert bridge.queued + bridge.dropped == 24
    assert bridge.queued <= 1 + 3 + 1  # the one being emitted, a full queue, a race at most
    gate.set()
    assert bridge.flush(10)
    assert bridge.emitted == bridge.queued
    assert len(sc.get_received(NS)) == bridge.emitted
    dropped_lines = [r for r in logs.json("errors") if "queue is full" in r["msg"]]
    assert len(dropped_lines) == 1


def test_socketio_logging_during_emit_cannot_loop(live_app: LiveApp, logs: Logs) -> None:
    """Socket.IO logging every emit (logger=True, root captured) reaches files, never the stream."""
    app, socketio = live_app(
        {**LIVE, "DIAGLOG_LOGGERS": "root"},
        socketio_kw={"logger": True, "engineio_logger": True},
    )
    sc = live_app.client(app, socketio)
    subscribe(sc, all=True)
    with capture_events(app) as events:
        app.test_client().get("/work")
        bridge = get_bridge(app)
        assert bridge is not None and bridge.flush(10)
    own = [e for e in events if not e.logger.startswith(("socketio", "engineio"))]
    assert {"request_start", "stage", "request_end"} <= {e.kind for e in own}
    assert bridge.emitted == bridge.queued == len(own)
    assert [d["event"] for d in received(sc, app)] == [e.kind for e in own]
    emitting = [r for r in logs.json("requests") if r["logger"].startswith("socketio")]
    assert any("emitting event" in r["msg"] for r in emitting)


def test_logging_from_the_emitting_task_cannot_loop(
    live_app: LiveApp, logs: Logs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any logger used while an emit is under way (here the app's own) goes to the files only."""
    app, socketio = live_app(LIVE)
    original = socketio.emit

    def chatty(*args: Any, **kwargs: Any) -> None:
        app.logger.warning("relaying %s", args[1]["event"])
        logging.getLogger("redis.connection").error("pretend reconnect")
        original(*args, **kwargs)

    monkeypatch.setattr(socketio, "emit", chatty)
    sc = live_app.client(app, socketio)
    subscribe(sc, all=True)
    app.test_client().get("/work")
    got = received(sc, app)
    bridge = get_bridge(app)
    assert bridge is not None
    assert bridge.emitted == bridge.queued == len(got) == 4
    relayed = [r["msg"] for r in logs.json("requests") if r["msg"].startswith("relaying")]
    assert relayed == [f"relaying {d['event']}" for d in got]
