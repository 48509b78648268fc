"""Request and job ids: sources, validation, echo; an invalid job id is recorded, not refused
(except with DIAGLOG_STRICT_IDS)."""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Callable

import pytest
from flask import Flask, Request

from flask_diaglog import current_job_id, current_request_id, stats
from tests.conftest import Logs


def _app_echoing_ids(
    make_app: Callable[..., Flask], config: dict[str, object] | None = None, **kw: object
) -> Flask:
    app = make_app(config, **kw)

    @app.route("/plain", methods=["GET", "POST"])
    def plain() -> dict[str, str | None]:
        return {"request_id": current_request_id(), "job_id": current_job_id()}

    @app.route("/jobs/<job_id>", methods=["GET", "POST"])
    def by_url(job_id: str) -> dict[str, str | None]:
        return {"request_id": current_request_id(), "job_id": current_job_id()}

    return app


def test_valid_request_id_is_used_and_echoed(make_app: Callable[..., Flask]) -> None:
    """A valid X-Request-ID is the request id and comes back in the response header."""
    client = _app_echoing_ids(make_app).test_client()
    r = client.get("/plain", headers={"X-Request-ID": "abc.DEF_1:2-3"})
    assert r.json["request_id"] == "abc.DEF_1:2-3"  # type: ignore[index]
    assert r.headers["X-Request-ID"] == "abc.DEF_1:2-3"


@pytest.mark.parametrize("bad", ["", "has space", "x" * 129, "semi;colon", "ünï"])
def test_invalid_request_id_is_replaced(make_app: Callable[..., Flask], bad: str) -> None:
    """An invalid X-Request-ID is not used; a new id is generated and echoed."""
    client = _app_echoing_ids(make_app).test_client()
    r = client.get("/plain", environ_overrides={"HTTP_X_REQUEST_ID": bad})
    rid = r.headers["X-Request-ID"]
    assert rid != bad and r.json["request_id"] == rid  # type: ignore[index]
    assert 1 <= len(rid) <= 128


def test_generated_ids_are_unique(make_app: Callable[..., Flask]) -> None:
    """Generated request ids differ for every request, across threads."""
    client = _app_echoing_ids(make_app).test_client()
    ids: list[str] = []

    def hit() -> None:
        for _ in range(50):
            ids.append(_app_client_id(client))

    threads = [threading.Thread(target=hit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 200 and len(set(ids)) == 200


def _app_client_id(client: object) -> str:
    return client.get("/plain").headers["X-Request-ID"]  # type: ignore[attr-defined, no-any-return]


def test_traceparent_trace_id_serves_as_request_id(make_app: Callable[..., Flask]) -> None:
    """Without X-Request-ID, a W3C traceparent's trace id is the request id."""
    client = _app_echoing_ids(make_app).test_client()
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    r = client.get("/plain", headers={"traceparent": tp})
    assert r.headers["X-Request-ID"] == "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"path": "/jobs/from-url", "headers": {"X-Job-ID": "hdr"}}, "from-url"),
        ({"headers": {"X-Job-ID": "hdr", "Idempotency-Key": '"idem"'}}, "hdr"),
        ({"headers": {"Idempotency-Key": '"idem-1"'}, "json": {"job_id": "body"}}, "idem-1"),
        ({"headers": {"Idempotency-Key": "bare-key"}}, "bare-key"),
        ({"json": {"job_id": "body"}, "query_string": {"job_id": "q"}}, "body"),
        ({"json": {"job_id": 42}}, "42"),
        ({"json": {"job_id": None}, "query_string": {"job_id": "q"}}, None),  # null: no job
        ({"data": {"job_id": "form"}, "query_string": {"job_id": "q"}}, "form"),
        ({"query_string": {"job_id": "query"}}, "query"),
        ({}, None),
    ],
)
def test_job_id_sources_in_order(
    make_app: Callable[..., Flask], kwargs: dict[str, object], expected: str | None
) -> None:
    """The job id comes from URL, X-Job-ID, Idempotency-Key, JSON, form, query, in that order."""
    client = _app_echoing_ids(make_app).test_client()
    path = str(kwargs.pop("path", "/plain"))
    r = client.post(path, **kwargs)  # type: ignore[arg-type]
    assert r.status_code == 200
    assert r.json["job_id"] == expected  # type: ignore[index]


INVALID_IDS = [
    ({"path": "/jobs/has space"}, "the URL (job_id view argument)", "has space"),
    ({"headers": {"X-Job-ID": "a/b"}}, "the X-Job-ID header", "a/b"),
    (
        {"headers": {"Idempotency-Key": '"' + "k" * 200 + '"'}},
        "the Idempotency-Key header",
        "k" * 64,
    ),
    ({"json": {"job_id": ["list"]}}, "the JSON body (job_id)", '["list"]'),
    ({"json": {"job_id": True}}, "the JSON body (job_id)", "true"),
    ({"data": {"job_id": "semi;colon"}}, "the form field job_id", "semi;colon"),
    ({"query_string": {"job_id": ""}}, "the query parameter job_id", ""),
]


@pytest.mark.parametrize(("kwargs", "source", "shown"), INVALID_IDS)
def test_an_invalid_job_id_never_changes_the_response(
    make_app: Callable[..., Flask], logs: Logs, kwargs: dict[str, object], source: str, shown: str
) -> None:
    """On a view without @guard_job, an invalid job id is not an id: the view runs as without
    DiagLog, the lines say job=-, and the end line keeps the value (cut to 64) as bad_job_id."""
    client = _app_echoing_ids(make_app, {"DIAGLOG_FORMAT": "json"}).test_client()
    kwargs = dict(kwargs)
    path = str(kwargs.pop("path", "/plain"))
    r = client.post(path, **kwargs)  # type: ignore[arg-type]
    assert r.status_code == 200
    assert r.json["job_id"] is None  # type: ignore[index]
    (end,) = logs.events("requests", "request_end")
    assert "job_id" not in end
    assert end["bad_job_id"] == shown


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_an_invalid_job_id_is_redacted_as_the_query_it_came_from(
    make_app: Callable[..., Flask], logs: Logs, fmt: str
) -> None:
    """``?job_id=token=S11`` is masked in the start line's query; the end line's bad_job_id,
    the same client text, is masked too."""
    client = _app_echoing_ids(make_app, {"DIAGLOG_FORMAT": fmt}).test_client()
    assert client.post("/plain?job_id=token%3DS11badjob").status_code == 200
    text = (logs.dir / "requests.log").read_text()
    assert "S11badjob" not in text
    assert 'bad_job_id="token=' in text if fmt == "plain" else '"bad_job_id":"token=' in text


@pytest.mark.parametrize(("kwargs", "source", "shown"), INVALID_IDS)
def test_strict_ids_answer_400_problem_json(
    make_app: Callable[..., Flask], logs: Logs, kwargs: dict[str, object], source: str, shown: str
) -> None:
    """With DIAGLOG_STRICT_IDS, an invalid job id is answered 400 problem+json on every route,
    naming where it came from."""
    client = _app_echoing_ids(make_app, {"DIAGLOG_STRICT_IDS": True}).test_client()
    kwargs = dict(kwargs)
    path = str(kwargs.pop("path", "/plain"))
    r = client.post(path, **kwargs)  # type: ignore[arg-type]
    assert r.status_code == 400
    assert r.mimetype == "application/problem+json"
    body = r.json
    assert body["status"] == 400 and body["title"] == "Invalid job id"  # type: ignore[index]
    assert source in body["detail"] and body["source"] == source  # type: ignore[index]
    text = logs.text("requests")
    assert "request_start POST" in text and " 400 " in text


def test_job_id_callable_overrides_lookup(make_app: Callable[..., Flask]) -> None:
    """DiagLog(job_id=callable) decides the job id; its result is validated the same way."""

    def from_tenant(req: Request) -> str | None:
        tenant = req.headers.get("X-Tenant")
        return f"{tenant}:{req.args.get('n')}" if tenant else None

    client = _app_echoing_ids(make_app, job_id=from_tenant).test_client()
    r = client.get("/plain?n=7", headers={"X-Tenant": "acme", "X-Job-ID": "ignored"})
    assert r.json["job_id"] == "acme:7"  # type: ignore[index]
    r = client.get("/plain?n=7", headers={"X-Tenant": "bad tenant"})
    assert r.status_code == 200 and r.json["job_id"] is None  # type: ignore[index]


def test_a_raising_job_id_callable_is_reported_once_and_counted(
    make_app: Callable[..., Flask], logs: Logs, capsys: pytest.CaptureFixture[str]
) -> None:
    """DiagLog(job_id=callable) raising on an unguarded view: the response is the app's, the
    lines carry no job id, and the failure is reported once (stderr, errors.log) and counted."""

    def broken(req: Request) -> str:
        raise KeyError("tenant")

    app = _app_echoing_ids(make_app, job_id=broken)
    client = app.test_client()
    for _ in range(2):
        r = client.get("/plain")
        assert r.status_code == 200 and r.json["job_id"] is None  # type: ignore[index]
    assert capsys.readouterr().err.count("DiagLog(job_id=...) callable failed") == 1
    reports = [x for x in logs.lines("errors") if "DiagLog(job_id=...) callable failed" in x]
    assert len(reports) == 1 and "KeyError" in reports[0]
    assert stats(app)["sink_failures"]["job_id"] == 2


def test_ids_are_none_outside_a_request() -> None:
    """current_request_id() and current_job_id() return None outside a request or job."""
    assert current_request_id() is None
    assert current_job_id() is None


def test_ids_are_none_in_a_plain_thread(make_app: Callable[..., Flask]) -> None:
    """A thread not started with spawn does not see the request's ids."""
    app = make_app()
    seen: list[object] = []

    @app.get("/")
    def index() -> str:
        t = threading.Thread(target=lambda: seen.append(current_request_id()))
        t.start()
        t.join()
        return "ok"

    app.test_client().get("/")
    assert seen == [None]


def test_generated_request_ids_are_unpredictable(make_app: Callable[..., Flask]) -> None:
    """Generated ids are 72 random bits: consecutive ids share no common prefix or counter, so a
    client cannot send the id the next request will get."""
    client = _app_echoing_ids(make_app).test_client()
    ids = [client.get("/plain").headers["X-Request-ID"] for _ in range(50)]
    assert all(re.fullmatch(r"[0-9a-f]{18}", i) for i in ids)
    prefixes = {i[:6] for i in ids}
    assert len(prefixes) > 40  # a per-process prefix plus a counter would give 1
    assert len({int(b, 16) - int(a, 16) for a, b in itertools.pairwise(ids)}) > 40


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Request-ID": "chosen-by-client"},
        {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
    ],
)
def test_incoming_ids_can_be_refused(
    make_app: Callable[..., Flask], logs: Logs, headers: dict[str, str]
) -> None:
    """DIAGLOG_TRUST_REQUEST_ID=False: a client's X-Request-ID or traceparent is never the id."""
    app = _app_echoing_ids(make_app, {"DIAGLOG_TRUST_REQUEST_ID": False})
    r = app.test_client().get("/plain", headers=headers)
    rid = r.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{18}", rid) and r.json["request_id"] == rid  # type: ignore[index]
    assert "chosen-by-client" not in logs.text("requests")
    assert "4bf92f3577b34da6a3ce929d0e0e4736" not in logs.text("requests")


def test_an_unread_body_leaves_the_job_id_to_the_query_string(
    make_app: Callable[..., Flask], logs: Logs
) -> None:
    """A JSON body the view never reads is not read for the lines either: the end line takes the
    query string's job id."""
    app = make_app({"DIAGLOG_FORMAT": "json"})

    @app.post("/ignore")
    def ignore() -> str:
        return "ok"

    r = app.test_client().post("/ignore?job_id=q1", json={"job_id": "body1"})
    assert r.status_code == 200
    end = logs.events("requests", "request_end")[-1]
    assert end["job_id"] == "q1"


def test_a_request_another_wsgi_app_answers_takes_the_query_job_id(
    make_app: Callable[..., Flask], logs: Logs
) -> None:
    """Mounted beside Flask (DispatcherMiddleware), a request Flask never serves still gets the
    query string's job id on its end line, and a body-less one on its start line as well."""
    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    from werkzeug.wrappers import Response

    app = make_app({"DIAGLOG_FORMAT": "json"}, init=False)
    app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, {"/other": Response("other")}
    )
    from flask_diaglog import DiagLog

    DiagLog(app)
    client = app.test_client()
    r = client.post("/other/x?job_id=q2", json={"job_id": "body2"})
    assert r.get_data() == b"other"
    end = logs.events("requests", "request_end")[-1]
    assert (end["path"], end["job_id"]) == ("/other/x", "q2")
