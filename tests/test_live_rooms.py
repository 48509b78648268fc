"""Who may join which live room, and how many: a client admitted by ``live_auth`` gets only the
rooms the app's ``live_subscribe`` allows (by default job and request rooms, never the firehose),
operators (``DIAGLOG_LIVE_TOKEN``, the dashboard's rule) get every room, and no client is in more
than ``DIAGLOG_LIVE_MAX_ROOMS`` (100) rooms. Flask-SocketIO's real test client, in process."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask, session
from flask_socketio import SocketIOTestClient
from test_live import LIVE, NS, LiveApp, received, subscribe

from flask_diaglog import DiagLog
from flask_diaglog.config import ConfigError

#: Live events forced on, no token: clients get in only through ``live_auth``.
APP_ONLY = {"DIAGLOG_LIVE": True, "DIAGLOG_FORMAT": "json", "SECRET_KEY": "test"}


@pytest.fixture
def live_app(make_app: Callable[..., Flask]) -> Iterator[LiveApp]:
    factory = LiveApp(make_app)
    yield factory
    factory.close()


def unsubscribe(sc: SocketIOTestClient, **what: Any) -> Any:
    return sc.emit("unsubscribe", what, namespace=NS, callback=True)


def test_a_live_auth_client_is_refused_the_firehose_by_default(live_app: LiveApp) -> None:
    """Admitted by ``live_auth`` alone, a client may follow a job or a request, but ``all`` and
    ``level`` are refused with an answer naming the room, and nothing of them arrives."""
    app, socketio = live_app(APP_ONLY, live_auth=lambda auth: True)
    sc = live_app.client(app, socketio, auth=None)
    assert sc.is_connected(NS)
    assert subscribe(sc, all=True) == {"ok": False, "error": "not allowed to subscribe to all"}
    assert subscribe(sc, level="INFO") == {
        "ok": False,
        "error": "not allowed to subscribe to log:INFO",
    }
    # one refused room refuses the whole payload: its job room is not joined either
    assert subscribe(sc, job_id="mine", all=True)["ok"] is False
    client = app.test_client()
    client.get("/work", headers={"X-Job-ID": "mine"})
    client.get("/work", headers={"X-Job-ID": "other", "X-Request-ID": "req-other"})
    assert received(sc, app) == []
    assert sc.is_connected(NS)

    assert subscribe(sc, job_id="mine") == {"ok": True, "rooms": ["job:mine"]}
    assert subscribe(sc, request_id="req-2") == {"ok": True, "rooms": ["request:req-2"]}
    client.get("/work", headers={"X-Job-ID": "mine"})
    client.get("/work", headers={"X-Job-ID": "other", "X-Request-ID": "req-2"})
    client.get("/work", headers={"X-Job-ID": "other"})
    got = received(sc, app)
    assert {(d["job_id"], d["request_id"] == "req-2") for d in got} == {
        ("mine", False),
        ("other", True),
    }


def test_operators_get_every_room_and_are_not_asked(live_app: LiveApp) -> None:
    """With a token and ``live_auth`` both set, the token's holder gets ``all`` (and the room
    check is never asked about it), while a client ``live_auth`` admitted is refused it."""
    asked: list[tuple[str, str | None]] = []

    def check(kind: str, value: str | None) -> bool:
        asked.append((kind, value))
        return False

    app, socketio = live_app(
        {**LIVE, "SECRET_KEY": "test"}, live_auth=lambda auth: True, live_subscribe=check
    )
    operator = live_app.client(app, socketio)
    user = live_app.client(app, socketio, auth={})
    assert subscribe(operator, all=True) == {"ok": True, "rooms": ["all"]}
    assert subscribe(operator, job_id="j1", level="DEBUG")["ok"] is True
    assert asked == []
    assert subscribe(user, all=True)["ok"] is False
    assert asked == [("all", None)]
    app.test_client().get("/work")
    assert len(received(operator, app)) == 4
    assert received(user, app) == []


def test_live_subscribe_decides_each_room_with_the_session(live_app: LiveApp) -> None:
    """``live_subscribe(kind, value)`` runs in the socket's request context (here it reads the
    session): it lets a user follow their own jobs only, and an admin everything; a check that
    raises refuses the room."""
    asked: list[tuple[str, str | None]] = []

    def may_follow(kind: str, value: str | None) -> bool:
        asked.append((kind, value))
        if value == "boom":
            raise RuntimeError("the check failed")
        if session.get("admin"):
            return True
        return kind == "job" and value in session.get("jobs", [])

    app, socketio = live_app(
        APP_ONLY, live_auth=lambda auth: "user" in session, live_subscribe=may_follow
    )

    @app.get("/login/<user>")
    def login(user: str) -> str:
        session.update(user=user, jobs=[f"{user}-job"], admin=user == "root")
        return "ok"

    def logged_in(user: str) -> SocketIOTestClient:
        client = app.test_client()
        client.get(f"/login/{user}")
        return live_app.client(app, socketio, auth=None, flask_client=client)

    anon = live_app.client(app, socketio, auth=None)
    assert not anon.is_connected(NS)  # live_auth still decides who connects
    ann, root = logged_in("ann"), logged_in("root")
    # the logins' own events are emitted (to no one) before anyone joins ``all``
    assert received(root, app) == []
    assert subscribe(ann, job_id="ann-job") == {"ok": True, "rooms": ["job:ann-job"]}
    assert subscribe(ann, job_id="bob-job") == {
        "ok": False,
        "error": "not allowed to subscribe to job:bob-job",
    }
    assert subscribe(ann, request_id="r-1")["ok"] is False  # the check decides requests too
    assert subscribe(ann, job_id="boom")["ok"] is False
    assert ann.is_connected(NS)
    assert subscribe(root, all=True) == {"ok": True, "rooms": ["all"]}
    assert ("all", None) in asked and ("request", "r-1") in asked

    client = app.test_client()
    for job in ("ann-job", "bob-job"):
        client.get("/work", headers={"X-Job-ID": job})
    assert {d["job_id"] for d in received(ann, app)} == {"ann-job"}
    assert {d["job_id"] for d in received(root, app)} == {"ann-job", "bob-job"}
    # leaving a room is never refused
    assert unsubscribe(ann, job_id="bob-job")["ok"] is True


def test_a_client_is_in_at_most_100_rooms(live_app: LiveApp) -> None:
    """The 101st room is refused with a clear error and not joined; joining a room again costs
    nothing, leaving one makes room, and each client has its own budget."""
    app, socketio = live_app(LIVE)
    sc, other = live_app.client(app, socketio), live_app.client(app, socketio)
    for n in range(99):
        assert subscribe(sc, job_id=f"j{n}")["ok"] is True
    too_many = subscribe(sc, job_id="j99", request_id="r99")  # two new rooms, one place left
    assert too_many == {
        "ok": False,
        "error": "too many rooms: a client may be in at most 100 (this one is in 99); "
        "unsubscribe from some first",
    }
    assert subscribe(sc, job_id="j99") == {"ok": True, "rooms": ["job:j99"]}
    assert subscribe(sc, job_id="j5")["ok"] is True  # already in it
    assert subscribe(sc, all=True)["ok"] is False
    assert subscribe(other, all=True)["ok"] is True

    client = app.test_client()
    client.get("/work", headers={"X-Job-ID": "j100", "X-Request-ID": "r99"})
    assert received(sc, app) == []
    assert unsubscribe(sc, job_id="j0")["ok"] is True
    assert subscribe(sc, job_id="j100")["ok"] is True
    client.get("/work", headers={"X-Job-ID": "j100"})
    assert {d["job_id"] for d in received(sc, app)} == {"j100"}


@pytest.mark.parametrize("from_env", [False, True])
def test_live_max_rooms_sets_the_cap(
    live_app: LiveApp, monkeypatch: pytest.MonkeyPatch, from_env: bool
) -> None:
    """With ``DIAGLOG_LIVE_MAX_ROOMS=3`` (app.config or the environment), the fourth room is
    refused with the error naming 3, and its events do not arrive; leaving a room makes room."""
    config: dict[str, Any] = dict(LIVE)
    if from_env:
        monkeypatch.setenv("DIAGLOG_LIVE_MAX_ROOMS", "3")
    else:
        config["DIAGLOG_LIVE_MAX_ROOMS"] = 3
    app, socketio = live_app(config)
    sc = live_app.client(app, socketio)
    for n in range(3):
        assert subscribe(sc, job_id=f"j{n}")["ok"] is True
    assert subscribe(sc, job_id="j3") == {
        "ok": False,
        "error": "too many rooms: a client may be in at most 3 (this one is in 3); "
        "unsubscribe from some first",
    }
    client = app.test_client()
    client.get("/work", headers={"X-Job-ID": "j3"})
    client.get("/work", headers={"X-Job-ID": "j0"})
    assert {d["job_id"] for d in received(sc, app)} == {"j0"}
    assert unsubscribe(sc, job_id="j0")["ok"] is True
    assert subscribe(sc, job_id="j3") == {"ok": True, "rooms": ["job:j3"]}


@pytest.mark.parametrize(
    ("value", "from_env", "expected"),
    [
        (0, False, "DIAGLOG_LIVE_MAX_ROOMS=0 (from app.config['DIAGLOG_LIVE_MAX_ROOMS']) "
         "must be at least 1"),
        (-1, False, "DIAGLOG_LIVE_MAX_ROOMS=-1 (from app.config['DIAGLOG_LIVE_MAX_ROOMS']) "
         "must be at least 1"),
        ("many", False, "DIAGLOG_LIVE_MAX_ROOMS='many' (from app.config"),
        (True, False, "DIAGLOG_LIVE_MAX_ROOMS=True (from app.config"),
        ("0", True, "DIAGLOG_LIVE_MAX_ROOMS='0' (from environment variable "
         "DIAGLOG_LIVE_MAX_ROOMS) must be at least 1"),
        ("-1", True, "DIAGLOG_LIVE_MAX_ROOMS='-1' (from environment variable "
         "DIAGLOG_LIVE_MAX_ROOMS) must be at least 1"),
        ("many", True, "DIAGLOG_LIVE_MAX_ROOMS='many' (from environment variable"),
    ],
    ids=["0", "-1", "many", "True", "env-0", "env--1", "env-many"],
)  # fmt: skip
def test_a_bad_live_max_rooms_stops_startup(
    make_app: Callable[..., Flask],
    monkeypatch: pytest.MonkeyPatch,
    value: Any,
    from_env: bool,
    expected: str,
) -> None:
    """0, a negative number or not a whole number is a ConfigError at ``DiagLog(app)`` naming the
    key, where the value came from and what is accepted."""
    config: dict[str, Any] = dict(LIVE)
    if from_env:
        monkeypatch.setenv("DIAGLOG_LIVE_MAX_ROOMS", value)
    else:
        config["DIAGLOG_LIVE_MAX_ROOMS"] = value
    app = make_app(config, init=False)
    with pytest.raises(ConfigError) as info:
        DiagLog(app)
    assert str(info.value).startswith(expected)


def _subscribe_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "flask_diaglog.live"
        and r.levelno == logging.WARNING
        and "live_subscribe" in r.getMessage()
    ]


def test_live_subscribe_without_live_auth_is_warned_about(
    live_app: LiveApp, caplog: pytest.LogCaptureFixture
) -> None:
    """``live_subscribe`` without ``live_auth`` would never be called (only operators connect,
    and they are not asked): startup logs a WARNING naming both."""
    asked: list[tuple[str, str | None]] = []

    def check(kind: str, value: str | None) -> bool:
        asked.append((kind, value))
        return False

    with caplog.at_level(logging.WARNING, logger="flask_diaglog.live"):
        app, socketio = live_app(LIVE, live_subscribe=check)
    [message] = _subscribe_warnings(caplog)
    assert "DiagLog(live_subscribe=...) is never called without DiagLog(live_auth=...)" in message
    operator = live_app.client(app, socketio)
    assert subscribe(operator, all=True)["ok"] is True
    assert not live_app.client(app, socketio, auth={}).is_connected(NS)
    assert asked == []  # as the warning says


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"live_auth": lambda auth: True},
        {"live_auth": lambda auth: True, "live_subscribe": lambda kind, value: True},
    ],
    ids=["neither", "live_auth", "both"],
)
def test_no_live_subscribe_warning_otherwise(
    live_app: LiveApp, caplog: pytest.LogCaptureFixture, kw: dict[str, Any]
) -> None:
    """Neither callable, ``live_auth`` alone, or both: no warning about ``live_subscribe``."""
    with caplog.at_level(logging.WARNING, logger="flask_diaglog.live"):
        live_app(LIVE, **kw)
    assert _subscribe_warnings(caplog) == []
