"""The dashboard against hostile traffic and hostile pages, over HTTP (Flask test client): one id
on thousands of requests, a token in the address bar, a Host header that names another site,
bidirectional controls in logged text.

The address bar in a real browser is in test_dashboard_pages.py.
"""

from __future__ import annotations

import http.client
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_diaglog import DiagLog, current_job_id, stage

#: What one trace answer shows at most (docs/dashboard.md, "Trace page").
MAX_SECTIONS = 20
MAX_LINES = 300
HEAD_LINES = 200
#: The dashboard token of the tests below (tokens have at least 16 characters).
TOKEN = "s3cret-dash-token"


def _flooded_app(make_app: Callable[..., Flask]) -> Flask:
    app = make_app({"DIAGLOG_DASHBOARD": True, "DIAGLOG_FORMAT": "json"}, init=False)
    diaglog = DiagLog(app)

    @app.post("/generate")
    def generate() -> tuple[str, int]:
        diaglog.spawn(lambda: None).join()
        return "started", 202

    @app.get("/status")
    def status() -> str:
        return str(current_job_id())

    @app.get("/n/<int:n>")
    def numbered(n: int) -> str:
        return str(n)

    @app.get("/chatty")
    def chatty() -> str:
        for n in range(1000):
            app.logger.warning("line %d", n)
        return "ok"

    return app


def test_one_job_id_on_thousands_of_requests_gives_a_bounded_trace(
    make_app: Callable[..., Flask],
) -> None:
    """Any client may put any job id on its requests. After one request started the job and
    1 500 others carried the same id, the trace answer holds 20 requests and job runs, the job
    run and the request that started it among them, and says how many it leaves out; the page
    says so too, and links to the list that has them all."""
    app = _flooded_app(make_app)
    client = app.test_client()
    job = {"X-Job-ID": "victim-job-42"}
    start = client.post("/generate", headers=job)
    assert start.status_code == 202
    for _ in range(1500):
        client.get("/status", headers=job)

    trace = client.get("/_diaglog/api/trace/victim-job-42").json
    assert trace is not None
    sections = trace["sections"]
    assert len(sections) == MAX_SECTIONS
    assert trace["more"] == 1 + 1 + 1500 - MAX_SECTIONS
    kinds = [(s["item"]["kind"], s["item"].get("path")) for s in sections]
    assert [k for k in kinds if k[0] == "job"] == [("job", None)]
    assert ("request", "/generate") in kinds
    assert sum(len(s["lines"]) for s in sections) < MAX_SECTIONS * 10

    page = client.get("/_diaglog/trace/victim-job-42")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert len(re.findall(r'<section class="item ', html)) == MAX_SECTIONS
    assert f"{trace['more']} more requests and job runs with this id not shown" in html
    assert 'href="/_diaglog/requests?job_id=victim-job-42"' in html
    listed = client.get("/_diaglog/api/requests?job_id=victim-job-42&per_page=1").json
    assert listed is not None and listed["total"] == 1502


def test_one_request_id_on_thousands_of_requests_gives_a_bounded_trace(
    make_app: Callable[..., Flask],
) -> None:
    """A client may send the same X-Request-ID on every request: the trace of that id holds the
    20 newest of them and counts the rest."""
    app = _flooded_app(make_app)
    client = app.test_client()
    for n in range(1200):
        client.get(f"/n/{n}", headers={"X-Request-ID": "victim-req-42"})
    trace = client.get("/_diaglog/api/trace/victim-req-42").json
    assert trace is not None
    assert len(trace["sections"]) == MAX_SECTIONS and trace["more"] == 1200 - MAX_SECTIONS
    paths = [s["item"]["path"] for s in trace["sections"]]
    assert paths == [f"/n/{n}" for n in range(1200 - MAX_SECTIONS, 1200)]
    assert all(2 <= len(s["lines"]) <= MAX_LINES for s in trace["sections"])
    html = client.get("/_diaglog/trace/victim-req-42").get_data(as_text=True)
    assert 'href="/_diaglog/requests?request_id=victim-req-42"' in html


def test_a_request_with_many_lines_shows_its_first_and_last_ones(
    make_app: Callable[..., Flask],
) -> None:
    """A section shows at most 300 lines: the first 200 and the last 100, and says how many
    between them it leaves out, in the API (``more_lines``, ``more_lines_at``) and the page."""
    app = _flooded_app(make_app)
    client = app.test_client()
    rid = client.get("/chatty").headers["X-Request-ID"]
    trace = client.get(f"/_diaglog/api/trace/{rid}").json
    assert trace is not None and trace["more"] == 0
    (section,) = trace["sections"]
    lines: list[dict[str, Any]] = section["lines"]
    assert len(lines) == MAX_LINES
    assert section["more_lines"] == 1002 - MAX_LINES and section["more_lines_at"] == HEAD_LINES
    assert lines[0]["event"] == "request_start" and lines[-1]["event"] == "request_end"
    assert lines[HEAD_LINES - 1]["msg"] == f"line {HEAD_LINES - 2}"
    assert lines[HEAD_LINES]["msg"] == f"line {1000 - (MAX_LINES - HEAD_LINES) + 1}"
    html = client.get(f"/_diaglog/trace/{rid}").get_data(as_text=True)
    assert html.count('<tr class="level-') == MAX_LINES
    assert f"{1002 - MAX_LINES} more lines not shown" in html


@pytest.mark.parametrize("n", [3])
def test_a_small_trace_is_shown_whole(make_app: Callable[..., Flask], n: int) -> None:
    """Under the bounds nothing is left out: ``more`` and ``more_lines`` are 0."""
    app = _flooded_app(make_app)
    client = app.test_client()
    for _ in range(n):
        client.get("/status", headers={"X-Job-ID": "small-job"})
    trace = client.get("/_diaglog/api/trace/small-job").json
    assert trace is not None and trace["more"] == 0 and len(trace["sections"]) == n
    assert all(s["more_lines"] == 0 and "more_lines_at" not in s for s in trace["sections"])
    assert b"not shown" not in client.get("/_diaglog/trace/small-job").data


# -- a token in the URL -----------------------------------------------------------------------


def _token_app(make_app: Callable[..., Flask], **config: object) -> Flask:
    app = make_app({"DIAGLOG_DASHBOARD": True, "DIAGLOG_DASHBOARD_TOKEN": TOKEN, **config})
    app.add_url_rule("/fast", "fast", lambda: "ok")
    return app


@pytest.mark.parametrize(
    ("url", "clean"),
    [
        (f"/_diaglog/?token={TOKEN}", "/_diaglog/"),
        (
            f"/_diaglog/requests?kind=request&token={TOKEN}&route=GET%20/orders/%3Cint:n%3E&q=a+b",
            "/_diaglog/requests?kind=request&route=GET%20/orders/%3Cint:n%3E&q=a+b",
        ),
        (f"/_diaglog/route?token={TOKEN}&route=GET%20/fast", "/_diaglog/route?route=GET%20/fast"),
        (f"/_diaglog/trace/abc?t%6Fken={TOKEN}&token=", "/_diaglog/trace/abc"),
    ],
)
def test_a_page_opened_with_a_token_redirects_to_its_url_without_it(
    make_app: Callable[..., Flask], url: str, clean: str
) -> None:
    """A page asked for with the right ``?token=`` is a 303 to the same URL without any
    ``token`` parameter (every other one kept as it came), and the answer sets the cookie that
    admits the next request."""
    app = _token_app(make_app)
    client = app.test_client()
    r = client.get(url)
    assert r.status_code == 303
    assert r.headers["Location"] == clean
    cookie = "; ".join(r.headers.getlist("Set-Cookie"))
    assert cookie.startswith("diaglog_dashboard=") and TOKEN not in cookie
    assert r.headers["X-Frame-Options"] == "DENY"
    follow = client.get(clean)
    assert follow.status_code in (200, 404) and follow.mimetype == "text/html"


def test_a_refused_token_is_not_redirected(make_app: Callable[..., Flask]) -> None:
    """A wrong ``?token=`` is still a 403, not a redirect that says the page is there."""
    app = _token_app(make_app)
    r = app.test_client().get("/_diaglog/requests?kind=job&token=nope")
    assert r.status_code == 403 and "Location" not in r.headers


def test_a_cookie_holder_with_a_stale_token_in_the_url_is_redirected(
    make_app: Callable[..., Flask],
) -> None:
    """With the cookie, a ``?token=`` left in a bookmark (right or not) is taken out of the URL."""
    app = _token_app(make_app)
    client = app.test_client()
    client.get(f"/_diaglog/?token={TOKEN}")
    r = client.get("/_diaglog/requests?token=old&per_page=5")
    assert r.status_code == 303 and r.headers["Location"] == "/_diaglog/requests?per_page=5"


def test_the_api_with_a_token_in_the_url_answers_as_asked(make_app: Callable[..., Flask]) -> None:
    """A script calling the JSON API with ``?token=`` (documented as a credential) gets its answer,
    not a redirect it would have to follow with a cookie jar."""
    app = _token_app(make_app)
    r = app.test_client().get(f"/_diaglog/api/requests?token={TOKEN}&per_page=1")
    assert r.status_code == 200 and r.is_json


# -- the Host header without a token (DNS rebinding) --------------------------------------------

LOOPBACK_HOSTS = [
    "localhost", "localhost:5055", "LocalHost:5055", "localhost.:5055", "dash.localhost:8080",
    "127.0.0.1:5055", "127.9.8.7", "[::1]:5055", "[::1]", "[::ffff:127.0.0.1]:80",
]  # fmt: skip
OTHER_HOSTS = [
    "attacker.example:5055", "127.0.0.1.attacker.example", "localhost.attacker.example:5055",
    "evil-localhost", "127.1", "2130706433", "[::2]:5055", "10.0.0.1", "[fe80::1%eth0]", "",
    "localhost:80:80", "localhost:http", "local host",
]  # fmt: skip


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
def test_without_a_token_a_loopback_host_is_admitted(
    make_app: Callable[..., Flask], host: str
) -> None:
    """A loopback client that names a loopback host (any port) sees the dashboard."""
    app = make_app({"DIAGLOG_DASHBOARD": True})
    r = app.test_client().get("/_diaglog/api/state", environ_overrides={"HTTP_HOST": host})
    assert r.status_code == 200


@pytest.mark.parametrize("host", OTHER_HOSTS)
def test_without_a_token_another_host_is_refused_saying_why(
    make_app: Callable[..., Flask], host: str
) -> None:
    """A loopback client whose Host header names another host (a page of a site whose name was
    rebound to 127.0.0.1) gets a 403 problem+json that says why and what to set, for pages,
    the API and static files alike."""
    app = make_app({"DIAGLOG_DASHBOARD": True})
    client = app.test_client()
    for url in ("/_diaglog/", "/_diaglog/api/state", "/_diaglog/static/dashboard.js"):
        r = client.get(url, environ_overrides={"HTTP_HOST": host})
        assert r.status_code == 403 and r.mimetype == "application/problem+json", url
        detail = r.json["detail"]  # type: ignore[index]
        assert "Host" in detail and "DIAGLOG_DASHBOARD_TOKEN" in detail and "rebinding" in detail
        assert r.headers["X-Frame-Options"] == "DENY"


def test_a_request_without_a_host_header_is_refused(make_app: Callable[..., Flask]) -> None:
    """No Host header at all (HTTP/1.0) names no loopback host either."""
    app = make_app({"DIAGLOG_DASHBOARD": True})
    environ = {"HTTP_HOST": None, "SERVER_NAME": "127.0.0.1"}
    r = app.test_client().get("/_diaglog/api/state", environ_overrides=environ)
    assert r.status_code == 403


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"X-Forwarded-Host": "attacker.example"}, 403),
        ({"X-Forwarded-Host": "localhost:5000, attacker.example"}, 403),
        ({"Forwarded": 'for=127.0.0.1;host="attacker.example:443"'}, 403),
        ({"X-Forwarded-Host": "localhost:5000"}, 200),
        ({"Forwarded": "for=127.0.0.1;host=127.0.0.1:5000"}, 200),
    ],
)
def test_without_a_token_a_host_a_local_proxy_named_must_be_loopback_too(
    make_app: Callable[..., Flask], headers: dict[str, str], code: int
) -> None:
    """A proxy on the same host that passes the browser's host on (X-Forwarded-Host, Forwarded)
    is judged by that host too, with or without ProxyFix."""
    app = make_app({"DIAGLOG_DASHBOARD": True})
    assert app.test_client().get("/_diaglog/api/state", headers=headers).status_code == code


def test_with_a_token_any_host_is_admitted(make_app: Callable[..., Flask]) -> None:
    """The token mode is unchanged: a client with the token may name any host."""
    app = _token_app(make_app)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    r = app.test_client().get(
        "/_diaglog/api/state", headers=bearer, base_url="http://dash.example.org:8080"
    )
    assert r.status_code == 200
    r = app.test_client().get("/_diaglog/api/state", base_url="http://dash.example.org:8080")
    assert r.status_code == 403 and "rebinding" not in r.json["detail"]  # type: ignore[index]


def test_a_real_server_refuses_a_rebound_host(make_app: Callable[..., Flask]) -> None:
    """Over a real socket, as ``curl -H 'Host: attacker.example:5055' 127.0.0.1:<port>/...``:
    refused; the same request naming 127.0.0.1 is admitted."""
    from servers import serve_in_thread

    app = make_app({"DIAGLOG_DASHBOARD": True})
    with serve_in_thread(app) as base:
        port = int(base.rsplit(":", 1)[1])
        answers = {}
        for host in ("attacker.example:5055", f"127.0.0.1:{port}"):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                conn.request("GET", "/_diaglog/api/state", headers={"Host": host})
                answers[host] = conn.getresponse().status
            finally:
                conn.close()
    assert answers == {"attacker.example:5055": 403, f"127.0.0.1:{port}": 200}


# -- bidirectional controls in logged text ("Trojan Source") ------------------------------------

#: U+202E RIGHT-TO-LEFT OVERRIDE, U+2066 LEFT-TO-RIGHT ISOLATE, ESC, NEL: what reorders or
#: hides the text shown after it.
UNSHOWN = ("\u202e", "\u2066", "\x1b", "\x85")


def test_bidi_controls_from_the_log_lines_are_shown_escaped(
    make_app: Callable[..., Flask], log_dir: Path
) -> None:
    """A JSON line holds U+202E escaped; read back it is the character again. Every page shows
    it (and the other controls the plain layout escapes) as the plain layout writes it, in the
    request's path, its message and its stage name; the JSON API keeps the value as logged."""
    app = make_app({"DIAGLOG_DASHBOARD": True, "DIAGLOG_FORMAT": "json"})

    @app.get("/files/<name>")
    def files(name: str) -> str:
        with stage("scan\u202e"):
            app.logger.warning("saved \u202egnp.exe\u2066 as \x1b[31mred\x85")
        return "ok"

    client = app.test_client()
    rid = client.get("/files/report%E2%80%AEfdp.exe").headers["X-Request-ID"]
    assert "\u202e" not in (log_dir / "requests.log").read_text(encoding="utf-8")
    api = client.get(f"/_diaglog/api/trace/{rid}")
    assert b"/files/report\\u202efdp.exe" in api.data  # escaped by Flask's JSON
    item = api.json["sections"][0]["item"]  # type: ignore[index]
    assert item["path"] == "/files/report\u202efdp.exe"  # the API: the value as logged
    pages = {
        "trace": f"/_diaglog/trace/{rid}",
        "list": "/_diaglog/requests",
        "overview": "/_diaglog/",
        "route": "/_diaglog/route?route=GET%20/files/<name>",
    }
    for name, url in pages.items():
        r = client.get(url)
        assert r.status_code == 200, name
        html = r.get_data(as_text=True)
        assert not [c for c in UNSHOWN if c in html], name
        assert "\\u202e" in html, name
    trace = client.get(pages["trace"]).get_data(as_text=True)
    assert "/files/report\\u202efdp.exe" in trace
    assert "saved \\u202egnp.exe\\u2066 as \\x1b[31mred\\x85" in trace
    assert "scan\\u202e" in trace  # the waterfall's label


def test_a_filter_for_a_control_character_survives_the_next_submit(
    make_app: Callable[..., Flask],
) -> None:
    """The list page's filter form holds what was asked for, U+202E included, as a character
    reference the browser reads back as the character (so the next submit asks for it again);
    everywhere else on the page the character is shown escaped. (JSON lines: reading them gives
    the character back.)"""
    app = make_app({"DIAGLOG_DASHBOARD": True, "DIAGLOG_FORMAT": "json"})
    app.add_url_rule("/files/<name>", view_func=lambda name: "ok")
    client = app.test_client()
    client.get("/files/report%E2%80%AEfdp.exe")
    html = client.get("/_diaglog/requests?q=%E2%80%AEfdp").get_data(as_text=True)
    assert not [c for c in UNSHOWN if c in html]
    assert 'name="q" size="16" value="&#x202e;fdp"' in html
    assert "/files/report\\u202efdp.exe" in html  # the match, listed
