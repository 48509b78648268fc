"""The dashboard over Socket.IO: with a SocketIO streaming diaglog's events, open pages refresh on
events (not on the poll), the socket is admitted by the dashboard's own rule (its HMAC cookie, or
loopback without a token) and never by a token in the page, and the poll takes over when the
socket is down or absent. Real servers, a real Socket.IO client and real headless Chromium."""

from __future__ import annotations

import contextlib
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import socketio as sio
from flask import Flask
from flask_socketio import SocketIO
from playwright.sync_api import Browser, Page
from servers import serve_in_thread
from werkzeug.middleware.proxy_fix import ProxyFix

import flask_diaglog.dashboard as dashboard
from flask_diaglog import DiagLog, stage
from flask_diaglog.dashboard.access import COOKIE, cookie_value
from flask_diaglog.live import get_bridge

pytestmark = pytest.mark.slow

NS = "/diaglog"
LIVE_TOKEN = "live-token-never-in-pages"
DASH_TOKEN = "dashboard-token-0123456789"
#: Pace of the safety-net poll while the socket is up: longer than any wait below, so what
#: arrives while the socket is up arrived over the socket.
NEVER_MS = 600_000


def _build(
    tmp_path: Path, socket: bool = True, proxied: bool = False, **config: Any
) -> tuple[Flask, SocketIO | None]:
    app = Flask("dashlive", instance_path=str(tmp_path / "instance"))
    if proxied:  # ProxyFix first, as apps usually do: Flask-SocketIO then wraps it
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)  # type: ignore[method-assign]
    app.config.update(
        DIAGLOG_LOG_DIR=str(tmp_path / "logs"),
        DIAGLOG_FORMAT="json",
        DIAGLOG_DASHBOARD=True,
        DIAGLOG_LIVE=socket,
        DIAGLOG_LIVE_TOKEN=LIVE_TOKEN,
        **config,
    )
    socketio = SocketIO(app, async_mode="threading") if socket else None
    DiagLog(app)

    @app.get("/orders/<int:n>")
    def orders(n: int) -> str:
        with stage("load"):
            app.logger.info("order %d", n)
        return "ok"

    @app.get("/burst")
    def burst() -> str:
        for i in range(60):
            app.logger.info("burst line %d", i)
        return "ok"

    return app, socketio


@dataclass
class Site:
    base: str
    app: Flask
    socketio: SocketIO

    def get(self, path: str) -> None:
        with urllib.request.urlopen(self.base + path, timeout=30) as r:
            r.read()


@pytest.fixture
def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Site]]:
    """``serve(wrap=None, **config)``: the app served by a real server (``wrap`` wraps its WSGI
    callable); a page polls every second until its socket is up, then (almost) never."""
    monkeypatch.setattr(dashboard, "LIVE_MS", 1000)
    monkeypatch.setattr(dashboard, "SOCKET_POLL_MS", NEVER_MS)
    apps: list[Flask] = []

    with contextlib.ExitStack() as servers:

        def start(wrap: Callable[[Any], Any] | None = None, **config: Any) -> Site:
            app, socketio = _build(tmp_path, **config)
            assert socketio is not None
            apps.append(app)
            base = servers.enter_context(serve_in_thread(wrap(app) if wrap else app))
            app.test_client().get("/orders/0")  # a first row
            return Site(base, app, socketio)

        yield start
    for app in apps:
        bridge = get_bridge(app)
        if bridge is not None:
            bridge.close()


def _page(browser: Browser) -> Page:
    return browser.new_page(viewport={"width": 1280, "height": 900})


def _mode(page: Page, mode: str) -> None:
    page.locator(f"body[data-live-mode={mode}]").wait_for(state="attached", timeout=15_000)


def test_a_new_row_arrives_over_the_socket(serve: Callable[..., Site], browser: Browser) -> None:
    """The open list switches to the socket, and a request's row appears on its events, with no
    live token in the page and no CSP violation."""
    site = serve()
    page = _page(browser)
    console: list[str] = []
    sockets: list[str] = []
    page.on("console", lambda m: console.append(m.text))
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.goto(site.base + "/_diaglog/requests")
    assert LIVE_TOKEN not in page.content()
    assert page.locator("body").get_attribute("data-live-socket-interval") == str(NEVER_MS)
    _mode(page, "socket")
    site.get("/orders/77")
    page.locator("#items td.path", has_text="/orders/77").wait_for(timeout=15_000)
    assert page.locator("body").get_attribute("data-live-mode") == "socket"
    for _ in range(150):  # the upgrade from long-polling to a websocket
        if sockets:
            break
        page.wait_for_timeout(100)
    assert sockets and sockets[0].startswith(site.base.replace("http:", "ws:") + "/socket.io/")
    assert not [m for m in console if "Content Security Policy" in m]


def test_a_burst_of_events_costs_few_fetches(serve: Callable[..., Site], browser: Browser) -> None:
    """Sixty log lines and a request's own events in a burst: the page fetches itself once or
    twice (debounced), not once per event."""
    site = serve()
    page = _page(browser)
    page.goto(site.base + "/_diaglog/requests")
    _mode(page, "socket")
    page.wait_for_timeout(500)  # the catch-up fetch after subscribing is done
    fetches: list[str] = []
    page.on("request", lambda r: fetches.append(r.url) if "/_diaglog/requests" in r.url else None)
    site.get("/burst")
    page.locator("#items td.path", has_text="/burst").wait_for(timeout=15_000)
    page.wait_for_timeout(1000)  # any late fetch of the burst
    assert 1 <= len(fetches) <= 3, fetches


def test_the_page_polls_when_the_socket_drops(serve: Callable[..., Site], browser: Browser) -> None:
    """Closed by the server, the socket stays down: the page goes back to the poll, which still
    brings new rows."""
    site = serve()
    page = _page(browser)
    page.goto(site.base + "/_diaglog/requests")
    _mode(page, "socket")
    server = site.socketio.server
    for sid, _ in list(server.manager.get_participants(NS, "all")):
        server.disconnect(sid, namespace=NS)
    _mode(page, "poll")
    site.get("/orders/88")
    page.locator("#items td.path", has_text="/orders/88").wait_for(timeout=15_000)
    assert page.locator("body").get_attribute("data-live-mode") == "poll"


def test_the_dashboard_cookie_admits_the_browser_socket(
    serve: Callable[..., Site], browser: Browser
) -> None:
    """With a dashboard token, the cookie a ?token= sets also travels with the socket's
    handshake: the page follows events without any token in it."""
    site = serve(DIAGLOG_DASHBOARD_TOKEN=DASH_TOKEN)
    page = _page(browser)
    page.goto(site.base + f"/_diaglog/?token={DASH_TOKEN}")
    page.goto(site.base + "/_diaglog/requests")  # the cookie, no token in the URL
    assert DASH_TOKEN not in page.content() and LIVE_TOKEN not in page.content()
    _mode(page, "socket")
    site.get("/orders/99")
    page.locator("#items td.path", has_text="/orders/99").wait_for(timeout=15_000)


class Listener:
    """A real Socket.IO client (over the network) that records the events it receives."""

    def __init__(self) -> None:
        self.client = sio.Client(reconnection=False)
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self.client.on("event", self._on_event, namespace=NS)

    def _on_event(self, data: dict[str, Any]) -> None:
        with self._cond:
            self.events.append(data)
            self._cond.notify_all()

    def connect(self, base: str, cookie: str | None, **more: str) -> None:
        headers = {"Cookie": f"{COOKIE}={cookie}"} if cookie is not None else {}
        headers.update(more)
        self.client.connect(base, namespaces=[NS], headers=headers, wait_timeout=15)
        ack = self.client.call("subscribe", {"all": True}, namespace=NS, timeout=15)
        assert ack == {"ok": True, "rooms": ["all"]}

    def heard(self, kind: str, timeout: float) -> bool:
        """Whether an event of ``kind`` arrives within ``timeout`` seconds."""
        with self._cond:
            return self._cond.wait_for(
                lambda: any(e["event"] == kind for e in self.events), timeout
            )

    def close(self) -> None:
        self.client.disconnect()
        self.client.shutdown()


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.close()


def test_the_dashboard_cookie_admits_a_client(
    serve: Callable[..., Site], listener: Listener
) -> None:
    """The cookie's value (an HMAC of the dashboard token) is what admits: events then flow."""
    site = serve(DIAGLOG_DASHBOARD_TOKEN=DASH_TOKEN)
    listener.connect(site.base, cookie_value(DASH_TOKEN))
    site.get("/orders/5")
    assert listener.heard("request_end", 15)


@pytest.mark.parametrize("cookie", [None, "", "0" * 64, DASH_TOKEN, cookie_value("another token")])
def test_clients_without_the_dashboard_cookie_are_refused(
    serve: Callable[..., Site], listener: Listener, cookie: str | None
) -> None:
    """No cookie, a wrong one, or the raw token in it: refused, and no event reaches them."""
    site = serve(DIAGLOG_DASHBOARD_TOKEN=DASH_TOKEN)
    with pytest.raises(sio.exceptions.ConnectionError):
        listener.connect(site.base, cookie)
    site.get("/orders/6")
    assert not listener.heard("request_end", 1) and listener.events == []


def test_without_a_token_non_loopback_clients_are_refused(
    serve: Callable[..., Site], listener: Listener
) -> None:
    """No dashboard token: the socket answers loopback clients only, like the pages."""

    def from_afar(app: Any) -> Any:
        def wsgi(environ: dict[str, Any], start_response: Any) -> Any:
            return app(dict(environ, REMOTE_ADDR="203.0.113.9"), start_response)

        return wsgi

    site = serve(wrap=from_afar)
    with pytest.raises(urllib.error.HTTPError) as refused:
        site.get("/_diaglog/")
    refused.value.close()
    assert refused.value.code == 403  # the page is refused to the same client
    with pytest.raises(sio.exceptions.ConnectionError):
        listener.connect(site.base, None)
    site.app.test_client().get("/orders/7")
    assert not listener.heard("request_end", 1) and listener.events == []


@pytest.mark.parametrize(
    "forwarded",
    [
        {"X-Forwarded-For": "203.0.113.9"},
        {"X-Forwarded-For": "127.0.0.1, 203.0.113.9"},
        {"Forwarded": "for=203.0.113.9;proto=http"},
        {"X-Real-IP": "203.0.113.9"},
    ],
)
def test_without_a_token_a_client_a_proxy_forwarded_is_refused(
    serve: Callable[..., Site], listener: Listener, forwarded: dict[str, str]
) -> None:
    """Behind a proxy on the same host, with ProxyFix applied before Flask-SocketIO wraps the
    app: a remote client is refused by the socket as by the pages, though the socket's handshake
    never passes through ProxyFix."""
    _refused_by_page_and_socket(serve(proxied=True), listener, forwarded, 9)


def _refused_by_page_and_socket(
    site: Site, listener: Listener, headers: dict[str, str], order: int
) -> None:
    """A request with ``headers`` gets a 403 from the dashboard's API, a handshake with them is
    refused, and the listener hears nothing of the app's next request."""
    page = urllib.request.Request(site.base + "/_diaglog/api/state", headers=headers)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(page, timeout=30).close()
    refused.value.close()
    assert refused.value.code == 403
    with pytest.raises(sio.exceptions.ConnectionError):
        listener.connect(site.base, None, **headers)
    site.app.test_client().get(f"/orders/{order}")
    assert not listener.heard("request_end", 1) and listener.events == []


def test_without_a_token_a_loopback_client_a_proxy_forwarded_is_admitted(
    serve: Callable[..., Site], listener: Listener
) -> None:
    """A proxy that names a loopback client: pages and socket admit it."""
    site = serve(proxied=True)
    local = {"X-Forwarded-For": "127.0.0.1"}
    page = urllib.request.Request(site.base + "/_diaglog/api/state", headers=local)
    with urllib.request.urlopen(page, timeout=30) as r:
        assert r.status == 200
    listener.connect(site.base, None, **local)
    site.get("/orders/10")
    assert listener.heard("request_end", 15)


def test_without_a_token_loopback_clients_are_admitted(
    serve: Callable[..., Site], listener: Listener
) -> None:
    """No dashboard token: a loopback client is admitted without any credential."""
    site = serve()
    listener.connect(site.base, None)
    site.get("/orders/8")
    assert listener.heard("request_end", 15)


def test_without_a_token_a_handshake_naming_another_host_is_refused(
    serve: Callable[..., Site], listener: Listener
) -> None:
    """No dashboard token: a loopback client whose handshake names another host (a page of a
    site whose name was rebound to 127.0.0.1) is refused by the socket as by the pages."""
    _refused_by_page_and_socket(serve(), listener, {"Host": "attacker.example:5055"}, 11)


def test_pages_name_the_socket_and_allow_it_in_the_csp(tmp_path: Path) -> None:
    """A page names the socket's path and namespace, loads the vendored client, and its CSP
    allows connections to its own host only, still without inline script."""
    app, _ = _build(tmp_path, DIAGLOG_DASHBOARD_TOKEN=DASH_TOKEN)  # any Host with a token
    bearer = {"Authorization": f"Bearer {DASH_TOKEN}"}
    try:
        resp = app.test_client().get(
            "/_diaglog/trace/R1", base_url="http://dash.example:8080", headers=bearer
        )
        html = resp.get_data(as_text=True)
        assert 'data-live-socket="/socket.io/"' in html and 'data-live-namespace="/diaglog"' in html
        assert 'data-live-follow="R1"' in html and "socket.io.min.js" in html
        csp = resp.headers["Content-Security-Policy"]
        assert "connect-src 'self' ws://dash.example:8080 wss://dash.example:8080;" in csp
        assert "script-src 'self';" in csp
        assert LIVE_TOKEN not in html
        js = app.test_client().get("/_diaglog/static/socket.io.min.js", headers=bearer)
        assert js.status_code == 200 and b"Socket.IO v4" in js.data
        js.close()
    finally:
        bridge = get_bridge(app)
        assert bridge is not None
        bridge.close()


def test_without_socketio_pages_poll(tmp_path: Path) -> None:
    """Without a SocketIO the pages name no socket and load no client: they poll."""
    app, _ = _build(tmp_path, socket=False)
    resp = app.test_client().get("/_diaglog/")
    html = resp.get_data(as_text=True)
    assert 'data-live-mode="poll"' in html and "data-live-socket" not in html
    assert "socket.io.min.js" not in html
    assert "ws://" not in resp.headers["Content-Security-Policy"]
