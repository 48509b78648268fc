"""The dashboard over HTTP (Flask test client): access, headers, the JSON API, bad input, bad data.

Pages in a real browser are in test_dashboard_pages.py; the index in test_dashboard_index.py;
cross-worker in-flight work in test_dashboard_peers.py.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from test_cli_summary import damaged_gz
from werkzeug.test import TestResponse

from flask_diaglog import DiagLog, stage
from flask_diaglog.config import load_settings
from flask_diaglog.dashboard import create_blueprint

#: The dashboard token of the tests below (tokens have at least 16 characters).
TOKEN = "s3cret-dash-token"


def _app(make_app: Callable[..., Flask], release: threading.Event, **config: object) -> Flask:
    app = make_app({"DIAGLOG_DASHBOARD": True, **config})

    @app.get("/slow/<job_id>")
    def slow(job_id: str) -> str:
        with stage("generate"):
            release.wait(30)
        return "done"

    app.add_url_rule("/fast", "fast", lambda: "ok")
    return app


def _busy_app(make_app: Callable[..., Flask], fmt: str = "json", **config: object) -> Flask:
    """An app with a mix: stages, a warning, a 404, a 500, a job with a failing background run."""
    app = make_app(
        {"DIAGLOG_DASHBOARD": True, "DIAGLOG_FORMAT": fmt, "TESTING": False, **config},
        init=False,
    )
    diaglog = DiagLog(app)

    @app.get("/work/<int:n>")
    def work(n: int) -> str:
        with stage("load"):
            time.sleep(0.002)
            with stage("parse"):
                time.sleep(0.004)
        with stage("render"):
            time.sleep(0.002 * (1 + n % 3))
        if n % 4 == 0:
            app.logger.warning("slow disk for item %d", n)
        return "ok"

    @app.post("/jobs/<job_id>")
    def start_job(job_id: str) -> tuple[str, int]:
        def crunch(fail: bool) -> None:
            with stage("crunch"):
                time.sleep(0.003)
            if fail:
                raise RuntimeError("crunch failed for " + job_id)

        diaglog.spawn(crunch, job_id.endswith("bad")).join()
        return job_id, 202

    @app.get("/boom")
    def boom() -> str:
        raise ValueError("it broke")

    client = app.test_client()
    for n in range(8):
        client.get(f"/work/{n}")
    client.get("/missing")
    client.get("/boom")
    client.post("/jobs/J-good")
    client.post("/jobs/J-bad")
    return app


CRUNCH = "_busy_app.<locals>.start_job.<locals>.crunch"


def _api(client: Any, url: str, **kw: Any) -> Any:
    r = client.get(url, **kw)
    assert r.status_code == 200, r.data
    return r.json


def test_dashboard_is_off_by_default(make_app: Callable[..., Flask]) -> None:
    """Without DIAGLOG_DASHBOARD the URL does not exist."""
    app = make_app()
    assert app.test_client().get("/_diaglog/").status_code == 404


def test_api_lists_inflight_and_recent(make_app: Callable[..., Flask], logs: object) -> None:
    """The state API shows a running request with its stage, then the finished one as recent."""
    release = threading.Event()
    app = _app(make_app, release)
    client = app.test_client()
    client.get("/fast")
    t = threading.Thread(target=lambda: app.test_client().get("/slow/J1"))
    t.start()
    try:
        for _ in range(500):
            inflight = client.get("/_diaglog/api/state").json["inflight"]  # type: ignore[index]
            if inflight and inflight[0]["stage"] == "generate":
                break
            release.wait(0.01)
        assert [(i["path"], i["job_id"], i["stage"]) for i in inflight] == [
            ("/slow/J1", "J1", "generate")
        ]
    finally:
        release.set()
        t.join(10)
    state = client.get("/_diaglog/api/state?limit=5").json
    assert state["inflight"] == []  # type: ignore[index]
    recent = [(r["path"], r["status"]) for r in state["recent"]]  # type: ignore[index]
    assert recent == [("/slow/J1", 200), ("/fast", 200)]
    assert "/_diaglog" not in logs.text("requests")  # type: ignore[attr-defined]


# -- access ---------------------------------------------------------------------------------


@pytest.mark.parametrize("addr", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_loopback_clients_are_admitted(make_app: Callable[..., Flask], addr: str) -> None:
    """Without a token, loopback addresses (IPv4, IPv6, IPv4-mapped) see the dashboard."""
    app = _app(make_app, threading.Event())
    r = app.test_client().get("/_diaglog/", environ_base={"REMOTE_ADDR": addr})
    assert r.status_code == 200


@pytest.mark.parametrize(
    "addr",
    ["10.1.2.3", "::1:5", "::10.0.0.1", "::1234:5678", "::ffff:10.0.0.1", "1::", "127.0.0.1x", ""],
)
def test_other_clients_are_refused_without_token(make_app: Callable[..., Flask], addr: str) -> None:
    """Only real loopback addresses pass: look-alikes by string prefix are refused."""
    app = _app(make_app, threading.Event())
    r = app.test_client().get("/_diaglog/", environ_base={"REMOTE_ADDR": addr})
    assert r.status_code == 403 and r.mimetype == "application/problem+json"


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"X-Forwarded-For": "203.0.113.9"}, 403),
        ({"X-Forwarded-For": "127.0.0.1, 10.0.0.7"}, 403),
        ({"X-Real-IP": "10.0.0.7"}, 403),
        ({"Forwarded": 'for="[2001:db8::17]:4711";proto=https'}, 403),
        ({"Forwarded": "for=unknown"}, 403),
        ({"X-Forwarded-For": "127.0.0.1"}, 200),
        ({"Forwarded": 'for="[::1]:4711"'}, 200),
    ],
)
def test_a_request_a_local_proxy_forwarded_counts_as_its_client(
    make_app: Callable[..., Flask], headers: dict[str, str], code: int
) -> None:
    """Without a token, a request from a proxy on the same host (loopback address) is admitted
    only when every client the proxy names is loopback too, with or without ProxyFix."""
    app = _app(make_app, threading.Event())
    r = app.test_client().get("/_diaglog/", headers=headers)
    assert r.status_code == code


def test_token_is_required_when_configured(make_app: Callable[..., Flask]) -> None:
    """With DIAGLOG_DASHBOARD_TOKEN, a wrong or missing token is refused; the right one works."""
    app = _app(make_app, threading.Event(), DIAGLOG_DASHBOARD_TOKEN=TOKEN)
    client = app.test_client()
    assert client.get("/_diaglog/").status_code == 403
    assert client.get("/_diaglog/?token=nope").status_code == 403
    assert client.get("/_diaglog/api/state", headers={"Authorization": f"Bearer {TOKEN}"}).is_json
    assert client.get(f"/_diaglog/?token={TOKEN}").status_code == 303  # to /_diaglog/
    assert client.get("/_diaglog/api/state").status_code == 200  # the cookie remembers it


def _cookie_header(r: TestResponse) -> str:
    return "; ".join(r.headers.getlist("Set-Cookie"))


def test_cookie_holds_no_raw_token_and_is_strict(make_app: Callable[..., Flask]) -> None:
    """The cookie set by ?token= is an HMAC, HttpOnly, SameSite=Strict, on the dashboard path."""
    app = _app(make_app, threading.Event(), DIAGLOG_DASHBOARD_TOKEN="s3cret-token-in-a-cookie")
    r = app.test_client().get("/_diaglog/?token=s3cret-token-in-a-cookie")
    cookie = _cookie_header(r)
    assert cookie.startswith("diaglog_dashboard=")
    assert "s3cret-token-in-a-cookie" not in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/_diaglog" in cookie
    assert "Secure" not in cookie


def test_cookie_is_secure_under_https(make_app: Callable[..., Flask]) -> None:
    """Over HTTPS the cookie is marked Secure."""
    app = _app(make_app, threading.Event(), DIAGLOG_DASHBOARD_TOKEN=TOKEN)
    r = app.test_client().get(f"/_diaglog/?token={TOKEN}", base_url="https://localhost")
    assert "Secure" in _cookie_header(r)


def test_refused_token_is_never_stored(make_app: Callable[..., Flask]) -> None:
    """A mistyped ?token= gets a 403 and no cookie."""
    app = _app(make_app, threading.Event(), DIAGLOG_DASHBOARD_TOKEN=TOKEN)
    r = app.test_client().get(f"/_diaglog/?token={TOKEN[:-1]}")
    assert r.status_code == 403 and not r.headers.getlist("Set-Cookie")


def test_one_token_a_request(make_app: Callable[..., Flask]) -> None:
    """One ``?token=`` is tried; several (the right one among them) are refused and set no
    cookie, so one request never tries more than one token. Empty values are no tokens."""
    app = _app(make_app, threading.Event(), DIAGLOG_DASHBOARD_TOKEN=TOKEN)
    for query in (f"token=nope&token={TOKEN}", f"token={TOKEN}&token=nope"):
        r = app.test_client().get(f"/_diaglog/?{query}")
        assert r.status_code == 403 and not r.headers.getlist("Set-Cookie")
    r = app.test_client().get(f"/_diaglog/?token=&token={TOKEN}&token=")
    assert r.status_code == 303 and r.headers.getlist("Set-Cookie")


def test_every_presented_credential_is_tried(make_app: Callable[..., Flask]) -> None:
    """A stale cookie does not hide a right Bearer header, nor a wrong header a right ?token=."""
    app = _app(make_app, threading.Event(), DIAGLOG_DASHBOARD_TOKEN=TOKEN)
    client = app.test_client()
    client.set_cookie("diaglog_dashboard", "stale", path="/_diaglog")
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/_diaglog/api/state", headers=bearer).status_code == 200
    wrong = {"Authorization": "Bearer nope"}
    assert client.get("/_diaglog/api/state", headers=wrong).status_code == 403
    assert client.get(f"/_diaglog/api/state?token={TOKEN}", headers=wrong).status_code == 200


@pytest.mark.parametrize(
    "url", ["/_diaglog/", "/_diaglog/api/state", "/_diaglog/static/dashboard.js", "/_diaglog/x"]
)
def test_security_headers_on_every_answer(make_app: Callable[..., Flask], url: str) -> None:
    """Pages, API, static files and refusals carry the CSP, frame and sniffing headers."""
    app = _app(make_app, threading.Event())
    for addr in ("127.0.0.1", "10.0.0.1"):
        r = app.test_client().get(url, environ_base={"REMOTE_ADDR": addr})
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert r.headers["X-Frame-Options"] == "DENY"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        r.close()


UNROUTED = [("POST", "/_diaglog/api/state", 405), ("GET", "/_diaglog", 308)]


@pytest.mark.parametrize(("method", "url", "status"), UNROUTED)
def test_unrouted_answers_carry_the_security_headers(
    make_app: Callable[..., Flask], method: str, url: str, status: int
) -> None:
    """A wrong method (405) and the redirect that adds the final slash (308) carry the headers
    of every dashboard answer."""
    app = _app(make_app, threading.Event())
    r = app.test_client().open(url, method=method)
    assert r.status_code == status
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    assert r.headers["X-Frame-Options"] == "DENY" and r.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(("method", "url", "status"), UNROUTED)
def test_unrouted_requests_of_other_clients_are_refused(
    make_app: Callable[..., Flask], method: str, url: str, status: int
) -> None:
    """A client the dashboard refuses gets its 403 for a wrong method or a missing slash too, not
    a 405 or a 308 that says what is there."""
    app = _app(make_app, threading.Event())
    r = app.test_client().open(url, method=method, environ_base={"REMOTE_ADDR": "10.0.0.1"})
    assert r.status_code == 403 and r.mimetype == "application/problem+json"
    assert r.headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize(
    ("method", "url", "status"),
    [
        ("POST", "/_diaglog/api/state", 405),
        ("DELETE", "/_diaglog/", 405),
        ("PUT", "/_diaglog/static/nope.js", 405),
        ("POST", "/_diaglog", 404),  # the rule with the slash takes GET only: no match at all
        ("GET", "/_diaglog/static/nope.js", 404),
        ("HEAD", "/_diaglog/static/nope.js", 404),
    ],
)
def test_errors_under_the_dashboard_url_are_problem_json(
    make_app: Callable[..., Flask], method: str, url: str, status: int
) -> None:
    """A wrong method, a missing static file: the status Flask gives, as problem+json (never
    Flask's HTML page), with the Allow header of a 405 kept."""
    app = _app(make_app, threading.Event())
    r = app.test_client().open(url, method=method)
    assert r.status_code == status
    assert r.mimetype == "application/problem+json"
    if method != "HEAD":
        body = r.get_json(force=True)
        assert body["status"] == status and body["title"] and body["detail"]
    if status == 405:
        assert "GET" in r.headers["Allow"]
    assert r.headers["X-Frame-Options"] == "DENY"


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "parameter"),
    [
        ("/_diaglog/api/state?limit=many", "limit"),
        ("/_diaglog/api/state?limit=%C2%B2", "limit"),  # a superscript two: a digit to isdigit()
        ("/_diaglog/api/requests?status=6xx", "status"),
        ("/_diaglog/api/requests?method=G%20T", "method"),
        ("/_diaglog/api/requests?min_ms=fast", "min_ms"),
        ("/_diaglog/api/requests?min_ms=-1", "min_ms"),
        ("/_diaglog/api/requests?level=LOUD", "level"),
        ("/_diaglog/api/requests?job_id=%3Cscript%3E", "job_id"),
        ("/_diaglog/api/requests?request_id=a%20b", "request_id"),
        ("/_diaglog/api/requests?since=yesterday", "since"),
        ("/_diaglog/api/requests?until=2026-13-45", "until"),
        ("/_diaglog/api/requests?since=nan", "since"),
        ("/_diaglog/api/route?route=GET%20/x&until=inf", "until"),
        ("/_diaglog/api/requests?kind=cron", "kind"),
        ("/_diaglog/api/requests?page=0", "page"),
        ("/_diaglog/api/requests?page=two", "page"),
        ("/_diaglog/api/requests?per_page=100000", "per_page"),
        ("/_diaglog/requests?page=-3", "page"),
        ("/_diaglog/api/route", "route"),
        ("/_diaglog/route?route=GET%20/x&since=soon", "since"),
        ("/_diaglog/api/trace/%3Cimg%3E", "id"),
        ("/_diaglog/trace/" + "x" * 129, "id"),
    ],
)
def test_invalid_parameter_is_a_400_naming_it(
    make_app: Callable[..., Flask], url: str, parameter: str
) -> None:
    """A bad filter, page number or id gets a problem+json 400 whose body names the parameter."""
    app = _app(make_app, threading.Event())
    r = app.test_client().get(url)
    assert r.status_code == 400 and r.mimetype == "application/problem+json"
    assert r.json["parameter"] == parameter  # type: ignore[index]
    assert parameter in r.json["detail"]  # type: ignore[index]


def test_unknown_id_is_a_404(make_app: Callable[..., Flask]) -> None:
    """A well-formed id that no line names: 404 problem+json from the API, a 404 page."""
    app = _app(make_app, threading.Event())
    client = app.test_client()
    r = client.get("/_diaglog/api/trace/no-such-id")
    assert r.status_code == 404 and r.mimetype == "application/problem+json"
    page = client.get("/_diaglog/trace/no-such-id")
    assert page.status_code == 404 and b"No line of the log files names no-such-id" in page.data


# -- bad data -------------------------------------------------------------------------------

GARBAGE = [
    b'{"ts":"2026-11-30T10:00:00.000+00:00","level":"INFO","event":"request_e',  # torn
    b"\xff\xfe\x00binary\x00junk",
    b"Nov 30 10:00:00 host sshd[1]: foreign syslog line",
    b"[" * 100_000,
    b'{"ts":"not a time","event":"request_end"}',
    b"2026-11-30 10:00:00.000 | INFO | x | req=r job=- ",  # a plain line cut short
]


@pytest.mark.parametrize("fmt", ["json", "plain"])
def test_garbled_lines_are_skipped_and_counted(
    make_app: Callable[..., Flask], log_dir: Path, fmt: str
) -> None:
    """Torn, binary, foreign and absurd lines never give a 500: they are skipped and counted."""
    app = _busy_app(make_app, fmt)
    with open(log_dir / "requests.log", "ab") as fh:
        for line in GARBAGE:
            fh.write(line + b"\n")
    client = app.test_client()
    for url in ("/_diaglog/", "/_diaglog/requests?q=junk", "/_diaglog/route?route=GET%20/boom"):
        assert client.get(url).status_code == 200
    index = _api(client, "/_diaglog/api/state")["index"]
    assert index["skipped_lines"] == len(GARBAGE)
    said = f"6 of {index['lines'] + 6} lines were not diaglog lines and were skipped"
    assert said.encode() in client.get("/_diaglog/").data


_END = '"event":"request_end","request_id":"bad-end","method":"GET","path":"/boom","status":200'
#: Well-formed lines whose known fields have the wrong type (the time is filled in).
WRONG_TYPES = [
    '"event":"hang","request_id":"r1","hung":"x"',
    '"event":"hang","request_id":"r1","hung":[1]',
    '"event":"hang","request_id":"r1","hung":1e999',
    '"event":"log","request_id":["r1"],"msg":"x"',
    '"event":"log","job_id":{"a":1},"msg":"x"',
    _END + ',"duration_ms":1.0,"stages":{"load":"x"}',
    _END + ',"duration_ms":1.0,"stages":{"load":null}',
    _END + ',"duration_ms":NaN',
    _END + ',"duration_ms":Infinity',
    '"event":"progress","request_id":"bad-progress","fraction":"x"',
]
#: Lines whose time no page can show.
FAR_TIMES = ["0001-01-01T00:00:00.000+01:00", "9999-12-31T23:59:59.000-01:00"]


def _append_json(log_dir: Path, body: str, ts: str | None = None) -> None:
    ts = ts or datetime.now().astimezone().isoformat(timespec="milliseconds")
    with open(log_dir / "requests.log", "a") as fh:
        fh.write(f'{{"ts":"{ts}",{body}}}\n')


_PAGES = [
    "/_diaglog/", "/_diaglog/requests", "/_diaglog/route?route=GET%20/boom",
    "/_diaglog/trace/bad-progress", "/_diaglog/api/overview", "/_diaglog/api/requests",
    "/_diaglog/api/route?route=GET%20/boom", "/_diaglog/api/trace/bad-end",
]  # fmt: skip


def _answers(client: Any) -> dict[str, int]:
    return {url: client.get(url).status_code for url in _PAGES}


@pytest.mark.parametrize("body", WRONG_TYPES, ids=range(len(WRONG_TYPES)))
def test_wrong_typed_fields_are_skipped_and_counted(
    make_app: Callable[..., Flask], log_dir: Path, body: str
) -> None:
    """A well-formed JSON line with a wrong-typed known field is a garbled line: skipped and
    counted, never a 500 on any page, and the other rows are still shown."""
    app = _busy_app(make_app)
    _append_json(log_dir, body)
    client = app.test_client()
    answers = _answers(client)
    assert set(answers.values()) <= {200, 404}, answers
    state = _api(client, "/_diaglog/api/state?limit=500")
    assert state["index"]["skipped_lines"] == 1
    assert len(state["recent"]) == 14


@pytest.mark.parametrize("ts", FAR_TIMES)
def test_lines_at_a_time_no_page_can_show_are_skipped(
    make_app: Callable[..., Flask], log_dir: Path, ts: str
) -> None:
    """A line dated before 1970 or past the year 9999 is skipped and counted, not a 500."""
    app = _busy_app(make_app)
    _append_json(log_dir, '"event":"log","request_id":"far","msg":"x"', ts)
    client = app.test_client()
    answers = _answers(client)
    assert set(answers.values()) <= {200, 404}, answers
    assert _api(client, "/_diaglog/api/state")["index"]["skipped_lines"] == 1


def test_plain_line_with_a_number_that_is_not_one_is_skipped(
    make_app: Callable[..., Flask], log_dir: Path
) -> None:
    """A plain diaglog line whose duration is not a number (``1.2.3ms``) is skipped and
    counted."""
    app = _busy_app(make_app, "plain")
    with open(log_dir / "requests.log", "a") as fh:
        now = datetime.now().strftime("%Y-%m-%d %H:%M:%S.000")
        fh.write(f"{now} | INFO | flask_diaglog.stage | req=r9 job=- | stage load 1.2.3ms ok\n")
    client = app.test_client()
    assert client.get("/_diaglog/").status_code == 200
    assert _api(client, "/_diaglog/api/state")["index"]["skipped_lines"] == 1


@pytest.mark.parametrize("how", ["truncated", "corrupt", "not gzip"])
def test_damaged_backup_is_counted_and_named(
    make_app: Callable[..., Flask], log_dir: Path, how: str
) -> None:
    """A damaged .gz backup never gives a 500 nor keeps the index reading: its lines up to the
    damage are indexed, the rest counts as one skipped line, and the page and the API name it."""
    app = _busy_app(make_app)
    ts = datetime.now().astimezone().isoformat(timespec="milliseconds")
    lines = [
        f'{{"ts":"{ts}","event":"request_end","request_id":"old{i}","method":"GET",'
        f'"path":"/old/{i}","status":200,"duration_ms":1.0}}\n'
        for i in range(200)
    ]
    backup = log_dir / "requests.log.1.gz"
    backup.write_bytes(damaged_gz(lines, how) if how != "not gzip" else b"not gzip\n" * 9)
    client = app.test_client()
    answers = _answers(client)
    assert set(answers.values()) <= {200, 404}, answers
    index = _api(client, "/_diaglog/api/state")["index"]
    assert index["skipped_lines"] == 1 and index["complete"]
    assert index["damaged_files"] == ["requests.log.1.gz"]
    assert b"damaged, read up to the damage: requests.log.1.gz" in client.get("/_diaglog/").data
    old = _api(client, "/_diaglog/api/requests?q=/old/")["total"]
    assert 0 < old <= 100 if how != "not gzip" else old == 0


def test_missing_log_directory_is_said_on_the_page(
    make_app: Callable[..., Flask], log_dir: Path
) -> None:
    """A log directory that disappeared gives a clear message, not an error."""
    app = _app(make_app, threading.Event())
    while log_dir.exists():  # the in-flight publisher may write a file meanwhile
        shutil.rmtree(log_dir, ignore_errors=True)
    r = app.test_client().get("/_diaglog/")
    assert r.status_code == 200
    assert f"The log directory {log_dir} does not exist.".encode() in r.data
    assert _api(app.test_client(), "/_diaglog/api/state")["index"]["problem"]


def test_unreadable_log_directory_is_said_on_the_page(tmp_path: Path) -> None:
    """A log directory that cannot be listed (here: a file in its place) is reported."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    app = Flask("unreadable", instance_path=str(tmp_path / "instance"))
    app.config.update(DIAGLOG_LOG_DIR=str(blocker), DIAGLOG_DASHBOARD=True)
    app.register_blueprint(create_blueprint(load_settings(app), dict, list))
    r = app.test_client().get("/_diaglog/")
    assert r.status_code == 200
    assert f"The log directory {blocker} cannot be read: it is not a directory".encode() in r.data


# -- the API --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "plain"])
def test_filters_select_rows(make_app: Callable[..., Flask], fmt: str) -> None:
    """Each filter narrows the list to the rows it names, in both line formats."""
    app = _busy_app(make_app, fmt)
    client = app.test_client()

    def rows(query: str) -> list[Any]:
        return [
            (i["kind"], i.get("path") or i.get("name"))
            for i in _api(client, "/_diaglog/api/requests?" + query)["items"]
        ]

    assert len(rows("")) == 8 + 2 + 2 + 2  # requests + 404/500 + 2 job requests + 2 jobs
    assert rows("status=5xx") == [("request", "/boom")]
    assert rows("status=404") == [("request", "/missing")]
    assert rows("route=(no%20route)") == [("request", "/missing")]  # 404s are one route
    assert {p for _, p in rows("method=POST")} == {"/jobs/J-good", "/jobs/J-bad"}
    assert rows("kind=job&job_id=J-bad") == [("job", CRUNCH)]
    assert rows("route=GET%20/work/%3Cint:n%3E&level=WARNING") == [
        ("request", "/work/4"),
        ("request", "/work/0"),
    ]
    assert rows("q=crunch%20failed") == [("job", CRUNCH)]
    assert rows("q=SLOW%20DISK%20FOR%20ITEM%204") == [("request", "/work/4")]
    assert len(rows("min_ms=1000")) == 0
    assert len(rows("since=1h")) == 14 and len(rows("until=1h")) == 0
    rid = _api(client, "/_diaglog/api/requests?status=500")["items"][0]["request_id"]
    assert rows(f"request_id={rid}") == [("request", "/boom")]


def test_inflight_api_has_the_index_state(make_app: Callable[..., Flask]) -> None:
    """/api/inflight, like every API answer, says how far the log files are read."""
    app = _busy_app(make_app)
    answer = _api(app.test_client(), "/_diaglog/api/inflight")
    assert answer["inflight"] == [] and answer["index"]["complete"]
    assert answer["index"]["lines"] > 0 and answer["index"]["skipped_lines"] == 0


@pytest.mark.parametrize("route", ["get%20/work/%3Cint:n%3E", "GET%20%20/work/%3Cint:n%3E"])
def test_route_filter_takes_any_case_and_spacing_of_the_method(
    make_app: Callable[..., Flask], route: str
) -> None:
    """``get /work/<int:n>`` and ``GET  /work/<int:n>`` name the route ``GET /work/<int:n>``, in
    the list and on the route page alike."""
    app = _busy_app(make_app)
    client = app.test_client()
    rows = _api(client, f"/_diaglog/api/requests?route={route}")
    assert rows["total"] == 8 and rows["filters"]["route"] == "GET /work/<int:n>"
    assert _api(client, f"/_diaglog/api/route?route={route}")["count"] == 8


def test_times_in_the_first_year_are_accepted(make_app: Callable[..., Flask]) -> None:
    """``0001-01-01`` is an ISO 8601 time like any other (local time out of mktime's range)."""
    app = _busy_app(make_app)
    client = app.test_client()
    assert _api(client, "/_diaglog/api/requests?since=0001-01-01")["total"] == 14
    assert _api(client, "/_diaglog/api/requests?until=0001-01-01T00:00")["total"] == 0


def test_pages_of_the_list(make_app: Callable[..., Flask]) -> None:
    """per_page and page cut the newest-first list into pages, with the total."""
    app = _busy_app(make_app)
    client = app.test_client()
    everything = _api(client, "/_diaglog/api/requests?per_page=500")["items"]
    first = _api(client, "/_diaglog/api/requests?per_page=5")
    second = _api(client, "/_diaglog/api/requests?per_page=5&page=2")
    assert first["total"] == len(everything) == 14
    assert first["items"] + second["items"] == everything[:10]
    assert [i["ts"] for i in everything] == sorted((i["ts"] for i in everything), reverse=True)


def test_trace_api_has_waterfall_lines_traceback_and_jobs(make_app: Callable[..., Flask]) -> None:
    """A job id's trace: the request with its lines, and the failed job with its traceback."""
    app = _busy_app(make_app)
    d = _api(app.test_client(), "/_diaglog/api/trace/J-bad")
    kinds = [s["item"]["kind"] for s in d["sections"]]
    assert kinds == ["request", "job"]
    request, job = d["sections"]
    assert [ln["event"] for ln in request["lines"]] == ["request_start", "request_end"]
    assert job["item"]["ok"] is False and "crunch failed for J-bad" in job["item"]["error"]
    assert [b["stage"] for b in job["waterfall"]] == ["crunch"]
    assert any("RuntimeError: crunch failed for J-bad" in t for t in job["tracebacks"])


def test_trace_waterfall_nests_stages(make_app: Callable[..., Flask]) -> None:
    """Stages inside stages get a deeper level; durations are the stage lines' own."""
    app = _busy_app(make_app)
    client = app.test_client()
    rid = _api(client, "/_diaglog/api/requests?q=/work/1")["items"][0]["request_id"]
    bars = _api(client, f"/_diaglog/api/trace/{rid}")["sections"][0]["waterfall"]
    assert [(b["stage"], b["depth"]) for b in bars] == [
        ("load", 0),
        ("load.parse", 1),
        ("render", 0),
    ]
    assert bars[0]["duration_ms"] >= bars[1]["duration_ms"] >= 4.0


def test_overview_and_route_api(make_app: Callable[..., Flask]) -> None:
    """The overview counts the last hour per minute; the route API has its histogram and mix."""
    app = _busy_app(make_app)
    client = app.test_client()
    ov = _api(client, "/_diaglog/api/overview")
    assert ov["totals"]["requests"] == 12 and ov["totals"]["errors"] == 1
    assert sum(ov["requests_per_minute"]) == 12 and len(ov["requests_per_minute"]) == 60
    assert ov["slowest_routes"][0]["route"] == "GET /work/<int:n>"
    route = _api(client, "/_diaglog/api/route?route=GET%20/work/%3Cint:n%3E")
    assert route["count"] == 8 and sum(b["count"] for b in route["histogram"]) == 8
    assert route["status_mix"] == {"200": 8}
    assert set(route["stages_avg_ms"]) == {"load", "load.parse", "render"}


@pytest.mark.parametrize(
    "url", ["/_diaglog/", "/_diaglog/requests?status=2xx", "/_diaglog/route?route=GET%20/fast"]
)
def test_live_poll_of_an_unchanged_page_is_a_304(make_app: Callable[..., Flask], url: str) -> None:
    """A poll with the page's ETag gets a bodiless 304 until something new is logged."""
    app = _app(make_app, threading.Event())
    client = app.test_client()
    client.get("/fast")
    for _ in range(3):  # the page shows the last hour by minute: a new minute is a new page
        minute = time.time() // 60
        tag = client.get(url).headers["ETag"]
        again = client.get(url, headers={"If-None-Match": tag})
        if time.time() // 60 == minute:
            break
    assert again.status_code == 304 and again.data == b""
    client.get("/fast")
    fresh = client.get(url, headers={"If-None-Match": tag})
    assert fresh.status_code == 200 and fresh.headers["ETag"] != tag


_SURROGATE_LINES = [
    '"event":"log","logger":"app","level":"WARNING","request_id":"r-s","msg":"name \\ud800"',
    '"event":"stage","request_id":"r-s","stage":"s\\udc9bx","duration_ms":1.0,"ok":true',
    _END.replace("bad-end", "r-s") + ',"duration_ms":1.0,"stages":{"s\\udc9bx":1.0}',
]


@pytest.mark.parametrize("url", ["/_diaglog/", "/_diaglog/requests", "/_diaglog/trace/r-s"])
def test_a_lone_surrogate_is_shown_as_its_escape(
    make_app: Callable[..., Flask], log_dir: Path, url: str
) -> None:
    """A lone surrogate in a JSON line (as the JSON escape ``\\ud800``) is shown as that text,
    as a plain line has it: never a 500."""
    app = make_app({"DIAGLOG_DASHBOARD": True})
    log_dir.mkdir(exist_ok=True)
    for body in _SURROGATE_LINES:
        _append_json(log_dir, body)
    r = app.test_client().get(url)
    assert r.status_code == 200
    assert b"s\\udc9bx" in r.data


@pytest.mark.parametrize("url", ["/_diaglog/", "/_diaglog/requests", "/_diaglog/trace/huge"])
def test_a_duration_no_time_can_hold_is_skipped_and_counted(
    make_app: Callable[..., Flask], log_dir: Path, url: str
) -> None:
    """An end line of ``"duration_ms": 1e+308`` (finite, but its start would be no time) is
    skipped and counted: never a 500."""
    app = _busy_app(make_app)
    _append_json(log_dir, _END.replace("bad-end", "huge") + ',"duration_ms":1e+308')
    client = app.test_client()
    assert client.get(url).status_code in {200, 404}
    assert _api(client, "/_diaglog/api/state")["index"]["skipped_lines"] == 1


@pytest.mark.parametrize("name", ["jobs.log.1", "requests.log.2.gz"])
def test_a_fifo_in_the_log_directory_is_never_opened(
    make_app: Callable[..., Flask], log_dir: Path, name: str
) -> None:
    """A FIFO named like a backup is not a log file: the first page answers (opening it would
    wait for a writer forever), with every other row."""
    log_dir.mkdir(exist_ok=True)
    os.mkfifo(log_dir / name)
    app = _busy_app(make_app)
    client = app.test_client()
    assert client.get("/_diaglog/").status_code == 200
    assert len(_api(client, "/_diaglog/api/state?limit=500")["recent"]) == 14


def _not_shown(html: bytes) -> str:
    """The text of the page's notice of what it does not show."""
    m = re.search(rb'<div class="notice warn" id="not-shown">(.*?)</div>', html, re.S)
    return " ".join(re.sub(rb"<[^>]+>", b" ", m[1]).decode().split()) if m else ""


def test_files_it_cannot_read_are_named_with_why(
    make_app: Callable[..., Flask], log_dir: Path
) -> None:
    """A FIFO and a dangling symlink named like log files, and a line no reader can take: the
    API's ``index`` and every page say what was skipped and why, in the CLI's words."""
    app = _busy_app(make_app)
    os.mkfifo(log_dir / "jobs.log.1")
    os.symlink(log_dir / "nowhere", log_dir / "requests.log.3")
    with open(log_dir / "requests.log", "ab") as fh:
        fh.write(GARBAGE[1] + b"\n")
    client = app.test_client()
    for url in ("/_diaglog/api/state", "/_diaglog/api/requests", "/_diaglog/api/inflight"):
        index = _api(client, url)["index"]
        assert index["unreadable_files"] == [
            "requests.log.3 (No such file or directory)",
            "jobs.log.1 (not a regular file)",
        ]
        assert index["skipped_lines"] == 1 and index["complete"]
    lines = index["lines"] + 1
    for url in ("/_diaglog/", "/_diaglog/requests", "/_diaglog/trace/J-bad"):
        assert _not_shown(client.get(url).data) == (
            f"Not shown here: 1 of {lines} lines were not diaglog lines and were skipped (torn, "
            "garbled or foreign) skipped, cannot be read: requests.log.3 (No such file or "
            "directory), jobs.log.1 (not a regular file)"
        )
    assert len(_api(client, "/_diaglog/api/state?limit=500")["recent"]) == 14


def test_state_files_it_ignores_are_named(make_app: Callable[..., Flask], log_dir: Path) -> None:
    """Other workers' state files that are not what a worker writes (garbled, a dangling
    symlink) are named in every answer's ``index`` and on every page, not only where in-flight
    work is shown; a page polled with its ETag is rendered again when one appears."""
    app = make_app({"DIAGLOG_DASHBOARD": True})
    log_dir.mkdir(exist_ok=True)
    client = app.test_client()
    tag = client.get("/_diaglog/requests").headers["ETag"]
    (log_dir / "inflight-evil-2.json").write_text("[" * 100_000)
    os.symlink(log_dir / "gone", log_dir / "inflight-gone-3.json")
    polled = client.get("/_diaglog/requests", headers={"If-None-Match": tag})
    assert polled.status_code == 200
    said = "ignored, not a worker's in-flight state file: "
    said += "inflight-evil-2.json, inflight-gone-3.json"
    assert _not_shown(polled.data) == f"Not shown here: {said}"
    assert _not_shown(client.get("/_diaglog/").data) == f"Not shown here: {said}"
    for url in ("/_diaglog/api/requests", "/_diaglog/api/route?route=GET%20/"):
        ignored = _api(client, url)["index"]["ignored_state_files"]
        assert ignored == ["inflight-evil-2.json", "inflight-gone-3.json"]


def test_a_clean_log_set_has_no_notice(make_app: Callable[..., Flask]) -> None:
    """Nothing skipped, nothing said: the notice is not on the page, the lists are empty."""
    app = _busy_app(make_app)
    client = app.test_client()
    index = _api(client, "/_diaglog/api/state")["index"]
    assert (index["unreadable_files"], index["ignored_state_files"]) == ([], [])
    assert b'id="not-shown"' not in client.get("/_diaglog/").data
