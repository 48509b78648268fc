"""The dashboard token against guessing and theft, over HTTP (Flask test client) and the live
socket's handshake (Flask-SocketIO's test client): a token is at least 16 characters, a client
that presented 10 refused credentials within 60 s is held off with a 429, and the cookie a
``?token=`` sets admits for 12 hours (its ``Max-Age``, checked by the server too).

The clocks are replaced (``attempts.clock``, ``access.wall_clock``): nothing here waits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_socketio import SocketIO

from flask_diaglog import DiagLog, attempts
from flask_diaglog.dashboard import access
from flask_diaglog.live import get_bridge
from flask_diaglog.values import ConfigError, parse_secret

TOKEN = "a-dashboard-token-of-24c"
NS = "/diaglog"
TWELVE_HOURS = 12 * 3600


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def monotonic(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The attempts' clock, moved by hand."""
    clock = Clock(1000.0)
    monkeypatch.setattr(attempts, "clock", clock)
    return clock


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The cookies' clock (epoch seconds), moved by hand."""
    clock = Clock(1_800_000_000.0)
    monkeypatch.setattr(access, "wall_clock", clock)
    return clock


@pytest.fixture
def app(make_app: Callable[..., Flask], monotonic: Clock, wall: Clock) -> Flask:
    return make_app({"DIAGLOG_DASHBOARD": True, "DIAGLOG_DASHBOARD_TOKEN": TOKEN})


def _client(app: Flask, addr: str = "203.0.113.7") -> FlaskClient:
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = addr
    return client


def _set_cookies(r: Any) -> list[str]:
    return [c for c in r.headers.getlist("Set-Cookie") if c.startswith("diaglog_dashboard=")]


# -- short tokens --------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["DIAGLOG_DASHBOARD_TOKEN", "DIAGLOG_LIVE_TOKEN"])
def test_a_token_shorter_than_16_characters_stops_startup(
    make_app: Callable[..., Flask], key: str
) -> None:
    """A 15-character token (blanks around it not counted) is a startup error that names the
    key and never shows the value; 16 characters start."""
    with pytest.raises(ConfigError) as info:
        make_app({key: "  s3cret-s3cret-  "})
    message = str(info.value)
    assert message.startswith(f"{key}='***' (from app.config")
    assert "at least 16 characters" in message
    assert "s3cret" not in message
    make_app({key: "s3cret-s3cret-16"})


@pytest.mark.parametrize("key", ["DIAGLOG_DASHBOARD_TOKEN", "DIAGLOG_LIVE_TOKEN"])
def test_the_short_token_error_says_the_minimum(key: str) -> None:
    """The parser's error names the key, the minimum and how to make a token, not the value."""
    with pytest.raises(ConfigError) as info:
        parse_secret("x", key, "environment variable " + key)
    message = str(info.value)
    assert message.startswith(f"{key}='***' (from environment variable {key}) is too short")
    assert "at least 16 characters" in message and "secrets.token_urlsafe" in message
    assert parse_secret("0123456789abcdef", key, "default") == "0123456789abcdef"
    assert parse_secret(None, key, "default") is None


# -- the cookie expires ----------------------------------------------------------------------------


def test_the_cookie_admits_for_12_hours(app: Flask, wall: Clock) -> None:
    """The cookie a ?token= sets carries Max-Age=43200 (still HttpOnly, SameSite=Strict); it
    admits until then, and after it is refused even if a client keeps sending it."""
    client = _client(app)
    r = client.get(f"/_diaglog/?token={TOKEN}")
    assert r.status_code == 303
    (cookie,) = _set_cookies(r)
    assert "Max-Age=43200" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert TOKEN not in cookie
    wall.now += TWELVE_HOURS - 1
    assert client.get("/_diaglog/api/state").status_code == 200
    wall.now += 2
    stale = client.get("/_diaglog/api/state")  # the test client still sends it
    assert stale.status_code == 403 and stale.mimetype == "application/problem+json"
    again = client.get(f"/_diaglog/?token={TOKEN}")
    assert again.status_code == 303 and "Max-Age=43200" in _set_cookies(again)[0]
    assert client.get("/_diaglog/api/state").status_code == 200


def test_an_expired_cookie_is_no_guess(app: Flask, wall: Clock) -> None:
    """A browser that keeps an expired cookie is refused, but never held off for it: its
    refusals count nothing, and the right token still gets in."""
    client = _client(app)
    client.get(f"/_diaglog/?token={TOKEN}")
    wall.now += TWELVE_HOURS + 1
    for _ in range(15):
        assert client.get("/_diaglog/api/state").status_code == 403
    assert client.get(f"/_diaglog/api/state?token={TOKEN}").status_code == 200


@pytest.fixture
def live_app(make_app: Callable[..., Flask], monotonic: Clock, wall: Clock) -> Iterator[Flask]:
    """The dashboard with a token, and a SocketIO its pages follow."""
    app = make_app(
        {"DIAGLOG_DASHBOARD": True, "DIAGLOG_DASHBOARD_TOKEN": TOKEN, "DIAGLOG_LIVE": True},
        init=False,
    )
    app.extensions["test_socketio"] = SocketIO(app, async_mode="threading")
    DiagLog(app)
    yield app
    bridge = get_bridge(app)
    assert bridge is not None
    bridge.close()


def test_both_cookies_admit_for_12_hours(live_app: Flask, wall: Clock) -> None:
    """With a live socket, the page a ?token= opens sets the dashboard's cookie and its copy for
    the socket, each with Max-Age=43200; a page a cookie holder loads later sets the socket's
    copy again expiring with the holder's cookie, never later."""
    client = _client(live_app)
    opened = client.get(f"/_diaglog/?token={TOKEN}", follow_redirects=True)
    assert opened.status_code == 200
    cookies = [c for r in (*opened.history, opened) for c in _set_cookies(r)]
    assert {c.split("Path=")[1].split(";")[0] for c in cookies} == {"/_diaglog", "/socket.io"}
    for cookie in cookies:
        assert "Max-Age=43200" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    wall.now += 3600
    (renewed,) = _set_cookies(client.get("/_diaglog/"))
    assert "Path=/socket.io" in renewed and f"Max-Age={TWELVE_HOURS - 3600}" in renewed


# -- guessing ----------------------------------------------------------------------------------


def _problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status and r.mimetype == "application/problem+json"
    body: dict[str, Any] = r.json
    assert body["status"] == status and body["title"] and body["detail"]
    return body


def test_ten_wrong_tokens_hold_the_client_off(app: Flask, monotonic: Clock) -> None:
    """After 10 refused tokens within 60 s, the 11th request from that address gets a 429
    problem+json with Retry-After, even with the right token, until the window has passed;
    another address is not affected."""
    client = _client(app)
    for n in range(10):
        _problem(client.get(f"/_diaglog/api/state?token=guess-{n:02d}-abcdefgh"), 403)
        monotonic.now += 5
    held = client.get(f"/_diaglog/api/state?token={TOKEN}")
    body = _problem(held, 429)
    assert body["type"] == "urn:flask-diaglog:problem:too-many-attempts"
    assert held.headers["Retry-After"] == "10"  # the first guess was 50 s ago
    assert held.headers["X-Frame-Options"] == "DENY"  # the dashboard's headers, as on a 403
    assert _client(app, "203.0.113.8").get(f"/_diaglog/?token={TOKEN}").status_code == 303
    _problem(client.get("/_diaglog/", headers={"Authorization": f"Bearer {TOKEN}"}), 429)
    _problem(client.get("/_diaglog"), 429)  # unrouted (the 308 that adds the slash) too
    monotonic.now += 9.5
    assert client.get(f"/_diaglog/api/state?token={TOKEN}").headers["Retry-After"] == "1"
    monotonic.now += 0.5  # the first guess is 60 s old: nine in the window
    bearer = {"Authorization": f"Bearer {TOKEN}"}  # (a ?token= would set the cookie)
    assert client.get("/_diaglog/api/state", headers=bearer).status_code == 200
    _problem(client.get("/_diaglog/api/state?token=one-more-guess-abcdef"), 403)
    _problem(client.get(f"/_diaglog/api/state?token={TOKEN}"), 429)  # ten in the window again


@pytest.mark.parametrize("kind", ["query", "bearer"])
def test_every_kind_of_credential_counts(app: Flask, kind: str) -> None:
    """A wrong ?token= or Bearer header: each is a guess."""
    client = _client(app, "2001:db8::5")
    wrong: dict[str, Any] = {}
    if kind == "query":
        wrong["query_string"] = {"token": "not-the-token-0123"}
    else:
        wrong["headers"] = {"Authorization": "Bearer not-the-token-0123"}
    for _ in range(10):
        _problem(client.get("/_diaglog/api/state", **wrong), 403)
    _problem(client.get("/_diaglog/api/state", **wrong), 429)
    _problem(client.get(f"/_diaglog/api/state?token={TOKEN}"), 429)


def test_a_refused_cookie_is_no_guess(app: Flask) -> None:
    """A cookie is an HMAC that cannot be guessed: tabs still holding an old token's cookie (or
    anything else in it) are refused but never hold their address off."""
    client = _client(app)
    client.set_cookie("diaglog_dashboard", "1800000000.0123abcd", path="/_diaglog")
    for _ in range(30):
        _problem(client.get("/_diaglog/api/state"), 403)
    assert client.get(f"/_diaglog/api/state?token={TOKEN}").status_code == 200


def test_many_tokens_in_one_request_are_as_many_guesses(app: Flask) -> None:
    """300 ``?token=`` values in one request (the right one among them) are refused, count as
    300 guesses, and hold the client off: one request cannot try many tokens."""
    client = _client(app)
    query = "&".join(f"token=guess-{n}-abcdefghijk" for n in range(299)) + f"&token={TOKEN}"
    _problem(client.get(f"/_diaglog/api/state?{query}"), 403)
    _problem(client.get(f"/_diaglog/api/state?token={TOKEN}"), 429)
    assert _client(app, "203.0.113.99").get(f"/_diaglog/api/state?token={TOKEN}").status_code == 200


def test_an_accepted_request_gives_back_only_its_own_guesses(app: Flask) -> None:
    """A request with the right token (a Bearer header) and a wrong ``?token=`` is admitted and
    counts nothing, however near the limit its client is: nine earlier guesses still count,
    so the tenth holds the client off."""
    client = _client(app)
    for n in range(9):
        _problem(client.get(f"/_diaglog/api/state?token=guess-{n}-abcdefghij"), 403)
    right = {"Authorization": f"Bearer {TOKEN}"}
    both = client.get("/_diaglog/api/state?token=wrong-one-abcdefghij", headers=right)
    assert both.status_code == 200
    _problem(client.get("/_diaglog/api/state?token=guess-9-abcdefghij"), 403)
    _problem(client.get("/_diaglog/api/state", headers=right), 429)


def test_a_cookie_from_a_clock_far_ahead_is_refused(app: Flask, wall: Clock) -> None:
    """A cookie set while the clock ran years ahead does not admit once the clock is right: its
    expiry is at most 12 hours (and a minute) away, and no cookie outlives that."""
    client = _client(app)
    real = wall.now
    wall.now = real + 10 * 365 * 86400
    assert client.get(f"/_diaglog/?token={TOKEN}").status_code == 303
    wall.now = real
    _problem(client.get("/_diaglog/api/state"), 403)


def test_requests_without_a_credential_count_nothing(app: Flask) -> None:
    """Refused requests that present no credential, and admitted ones, are no guesses."""
    client = _client(app)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for _ in range(30):
        _problem(client.get("/_diaglog/api/state"), 403)
        assert client.get("/_diaglog/api/state", headers=bearer).status_code == 200
    for n in range(9):
        _problem(client.get(f"/_diaglog/api/state?token=guess-{n}-abcdefghij"), 403)
    assert client.get("/_diaglog/api/state", headers=bearer).status_code == 200  # nine: admitted


def test_an_ipv6_client_is_its_64_network(app: Flask) -> None:
    """Guesses from addresses of one /64 count together; another /64 is another client."""
    for n in range(10):
        client = _client(app, f"2001:db8:0:1::{n + 1:x}")
        _problem(client.get("/_diaglog/api/state?token=guess-abcdefghijkl"), 403)
    _problem(_client(app, "2001:db8:0:1::ffff").get(f"/_diaglog/?token={TOKEN}"), 429)
    assert _client(app, "2001:db8:0:2::1").get(f"/_diaglog/?token={TOKEN}").status_code == 303


def test_the_live_socket_handshake_is_counted_and_held_off(live_app: Flask) -> None:
    """Guesses on the live socket's handshake count with the pages', and a client held off is
    refused there too, the right token included."""
    socketio: SocketIO = live_app.extensions["test_socketio"]
    client = _client(live_app, "198.51.100.4")

    def handshake(token: str) -> bool:
        sio = socketio.test_client(
            live_app, namespace=NS, query_string=f"token={token}", flask_test_client=client
        )
        connected = sio.is_connected(NS)
        if connected:
            sio.disconnect(NS)
        return connected

    assert handshake(TOKEN)
    for n in range(10):
        assert not handshake(f"socket-guess-{n}-abcdef")
    assert not handshake(TOKEN)
    _problem(client.get(f"/_diaglog/?token={TOKEN}"), 429)
    other = _client(live_app, "198.51.100.5")
    sio = socketio.test_client(
        live_app, namespace=NS, query_string=f"token={TOKEN}", flask_test_client=other
    )
    assert sio.is_connected(NS)
    sio.disconnect(NS)


LIVE_TOKEN = "a-live-token-of-24-chars"


@pytest.fixture
def live_users(make_app: Callable[..., Flask], monotonic: Clock, wall: Clock) -> Iterator[Flask]:
    """The dashboard with a token, DIAGLOG_LIVE_TOKEN, and the app's own live users admitted by
    ``live_auth`` when their payload says ``{"user": ...}``."""
    with _with_live_users(
        make_app, lambda app, auth: isinstance(auth, dict) and "user" in auth
    ) as app:
        yield app


@contextlib.contextmanager
def _with_live_users(
    make_app: Callable[..., Flask], live_auth: Callable[[Flask, Any], bool]
) -> Iterator[Flask]:
    """An app with the dashboard's token and DIAGLOG_LIVE_TOKEN, whose ``live_auth`` is
    ``live_auth(app, auth)``; its live bridge closed after."""
    app = make_app(
        {
            "DIAGLOG_DASHBOARD": True,
            "DIAGLOG_DASHBOARD_TOKEN": TOKEN,
            "DIAGLOG_LIVE": True,
            "DIAGLOG_LIVE_TOKEN": LIVE_TOKEN,
        },
        init=False,
    )
    app.extensions["test_socketio"] = SocketIO(app, async_mode="threading")
    DiagLog(app, live_auth=lambda auth: live_auth(app, auth))
    try:
        yield app
    finally:
        bridge = get_bridge(app)
        assert bridge is not None
        bridge.close()


def _connects(app: Flask, client: FlaskClient, auth: Any = None, query: str = "") -> bool:
    socketio: SocketIO = app.extensions["test_socketio"]
    sio = socketio.test_client(
        app, namespace=NS, auth=auth, query_string=query, flask_test_client=client
    )
    connected = sio.is_connected(NS)
    if connected:
        sio.disconnect(NS)
    return connected


def test_live_token_guesses_are_counted_and_held_off(live_users: Flask) -> None:
    """Wrong DIAGLOG_LIVE_TOKENs in the auth payload count as the dashboard's guesses do: after
    10, the right live token is refused too, and so is the dashboard, for that client only."""
    client = _client(live_users, "198.51.100.7")
    assert _connects(live_users, client, {"token": LIVE_TOKEN})
    for n in range(10):
        assert not _connects(live_users, client, {"token": f"live-guess-{n}-abcdefgh"})
    assert not _connects(live_users, client, {"token": LIVE_TOKEN})
    _problem(client.get(f"/_diaglog/api/state?token={TOKEN}"), 429)
    assert _connects(live_users, _client(live_users, "198.51.100.8"), {"token": LIVE_TOKEN})


def test_the_apps_own_live_users_are_no_guessers(live_users: Flask) -> None:
    """Handshakes ``live_auth`` admits count nothing, whatever ``?token=`` or Bearer the app's
    clients send with them: their address keeps the dashboard. While an address is held off,
    ``live_auth`` still admits its users, never as operators."""
    client = _client(live_users, "198.51.100.9")
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer the-apps-own-jwt-0123456789"
    for _ in range(30):
        assert _connects(live_users, client, {"user": "ann"}, "token=the-apps-own-jwt-0123")
    del client.environ_base["HTTP_AUTHORIZATION"]
    assert client.get(f"/_diaglog/api/state?token={TOKEN}").status_code == 200
    guesser = _client(live_users, "198.51.100.9")  # the same address, no cookie
    for n in range(10):
        _problem(guesser.get(f"/_diaglog/api/state?token=guess-{n}-abcdefghij"), 403)
    assert _connects(live_users, guesser, {"user": "ann"})
    assert not _connects(live_users, guesser, {"token": LIVE_TOKEN})


def test_guesses_being_judged_count_against_the_limit(
    make_app: Callable[..., Flask], monotonic: Clock, wall: Clock
) -> None:
    """A credential counts from the moment it is taken, not once its verdict is in: while one
    handshake's wrong live token is being judged (here, inside the app's ``live_auth``), the
    same client has only 9 guesses left on the dashboard, so concurrent guesses cannot pass
    the limit. A handshake ``live_auth`` admits gives its count back."""
    meanwhile: list[int] = []

    def live_auth(app: Flask, auth: Any) -> bool:
        if auth.get("guess"):  # the same address guesses on the dashboard in the meantime
            guesser = _client(app, "198.51.100.20")
            for n in range(10):
                r = guesser.get(f"/_diaglog/api/state?token=g-{n}-abcdefghij")
                meanwhile.append(r.status_code)
        return bool(auth.get("user"))

    with _with_live_users(make_app, live_auth) as app:
        client = _client(app, "198.51.100.20")
        wrong = {"token": "live-guess-abcdefgh"}
        assert not _connects(app, client, {**wrong, "guess": True})
        assert meanwhile == [403] * 9 + [429]
        monotonic.now += 61  # the window has passed
        meanwhile.clear()
        assert _connects(app, client, {**wrong, "user": "ann", "guess": True})
        assert meanwhile == [403] * 9 + [429]  # counted while it was judged, admitted or not
        monotonic.now += 61
        assert _connects(app, client, {**wrong, "user": "ann"})  # given back once admitted:
        for n in range(10):  # ten guesses left
            _problem(client.get(f"/_diaglog/api/state?token=g-{n}-abcdefghij"), 403)
        _problem(client.get(f"/_diaglog/api/state?token={TOKEN}"), 429)
