"""The promise: attaching ``DiagLog(app)`` changes none of the app's behaviour.

One varied app is built twice, without and with DiagLog, and every request is sent to both as the
very same bytes. Status, headers and body must be equal byte for byte. The only differences
allowed are the documented ones: an added ``X-Request-ID`` header (unless the app sets its own)
and diaglog's entries in ``Server-Timing``.
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, Response, make_response, redirect, request, stream_with_context
from werkzeug.test import EnvironBuilder, run_wsgi_app

from flask_diaglog import DiagLog, current_job_id, inflight
from tests.conftest import Logs
from tests.servers import serve_in_thread


def _digest(data: bytes) -> str:
    return f"{len(data)}:{hashlib.sha256(data).hexdigest()[:16]}"


def build(log_dir: Path | None) -> Flask:
    """The varied app; with ``log_dir``, DiagLog is attached."""
    app = Flask("varied")
    app.config.update(TESTING=True, MAX_CONTENT_LENGTH=4 * 1024 * 1024)

    @app.route("/plain", methods=["GET", "POST"])
    def plain() -> Any:
        return {"args": request.args.to_dict(flat=False)}

    @app.post("/ask-then/<how>")
    def ask_then(how: str) -> Any:
        current_job_id()  # diaglog may look for a job id in the body first
        return read(how)

    @app.post("/read/<how>")
    def read(how: str) -> Any:
        if how == "stream":
            return _digest(request.stream.read())
        if how == "wsgi-input":
            length = int(request.environ.get("CONTENT_LENGTH") or 0)
            return _digest(request.environ["wsgi.input"].read(length))
        if how == "data":
            return _digest(request.get_data())
        if how == "json":
            return {"json": request.get_json(silent=True)}
        if how == "json-strict":
            return {"json": request.get_json()}
        if how == "form":
            return {"form": request.form.to_dict(flat=False)}
        if how == "form-then-data":
            return {"form": request.form.to_dict(), "data": _digest(request.get_data())}
        if how == "files":
            return {k: _digest(f.read()) for k, f in request.files.items()}
        raise AssertionError(how)

    @app.post("/ignore-body")
    def ignore_body() -> str:
        return "not read"

    @app.get("/stream")
    def stream() -> Response:
        def gen() -> Any:
            for i in range(3):
                yield f"chunk {i}\n"

        return Response(stream_with_context(gen()), mimetype="text/plain")

    @app.get("/redirect")
    def moved() -> Any:
        return redirect("/plain?from=redirect", code=302)

    @app.get("/cookie")
    def cookie() -> Any:
        resp = make_response({"seen": request.cookies.get("session")})
        resp.set_cookie("session", "abc", httponly=True)
        resp.set_cookie("theme", "dark")
        return resp

    @app.get("/own-id")
    def own_id() -> Any:
        return "mine", 200, {"X-Request-ID": "app-chosen-1"}

    @app.get("/own-timing")
    def own_timing() -> Any:
        return "timed", 200, {"Server-Timing": 'db;dur=5.0;desc="query"'}

    @app.get("/abort/<int:code>")
    def abort_with(code: int) -> Any:
        from flask import abort

        abort(code)

    @app.get("/jobs/<job_id>")
    def by_job(job_id: str) -> Any:
        return {"job_id": job_id}

    if log_dir is not None:
        app.config["DIAGLOG_LOG_DIR"] = str(log_dir)
        DiagLog(app)
    return app


Request = dict[str, Any]

NESTED = b"[" * 200_000

#: Every request is built once (so multipart boundaries are the same) and sent to both apps.
REQUESTS: dict[str, Request] = {
    "plain": {"path": "/plain"},
    "query job_id with a slash": {"path": "/plain", "query_string": "job_id=a/b"},
    "empty query job_id": {"path": "/plain", "query_string": "job_id="},
    "long query job_id": {"path": "/plain", "query_string": "job_id=" + "x" * 129},
    "X-Job-ID with a space": {"path": "/plain", "headers": {"X-Job-ID": "a b"}},
    "Idempotency-Key with spaces": {
        "path": "/plain",
        "headers": {"Idempotency-Key": "key with spaces"},
    },
    "invalid URL job id": {"path": "/jobs/has%20space"},
    "JSON job_id a/b": {"path": "/read/json", "method": "POST", "json": {"job_id": "a/b"}},
    "JSON job_id 1.5": {"path": "/read/json", "method": "POST", "json": {"job_id": 1.5}},
    "JSON job_id list": {"path": "/read/json", "method": "POST", "json": {"job_id": ["x"]}},
    "form job_id with a space": {
        "path": "/read/form",
        "method": "POST",
        "data": {"job_id": "a b"},
    },
    "deeply nested JSON, unread": {
        "path": "/ignore-body",
        "method": "POST",
        "data": NESTED,
        "content_type": "application/json",
    },
    "deeply nested JSON, read": {
        "path": "/read/json",
        "method": "POST",
        "data": NESTED,
        "content_type": "application/json",
    },
    "broken JSON, strict read": {
        "path": "/read/json-strict",
        "method": "POST",
        "data": b'{"job_id": ',
        "content_type": "application/json",
    },
    "invalid UTF-8 JSON": {
        "path": "/read/json",
        "method": "POST",
        "data": b'{"job_id": "\xff\xfe"}',
        "content_type": "application/json",
    },
    "JSON body declared as text": {
        "path": "/read/data",
        "method": "POST",
        "data": b'{"job_id": "j-1"}',
        "content_type": "text/plain",
    },
    "too large": {
        "path": "/read/data",
        "method": "POST",
        "data": b"x" * (5 * 1024 * 1024),
        "content_type": "application/json",
    },
    "streamed response": {"path": "/stream"},
    "redirect": {"path": "/redirect"},
    "cookies": {"path": "/cookie", "headers": {"Cookie": "session=old; theme=light"}},
    "own X-Request-ID": {"path": "/own-id"},
    "own X-Request-ID, client sends one too": {
        "path": "/own-id",
        "headers": {"X-Request-ID": "client-1"},
    },
    "own Server-Timing": {"path": "/own-timing"},
    "404": {"path": "/nowhere"},
    "405": {"path": "/stream", "method": "DELETE"},
    "abort 418": {"path": "/abort/418"},
}

BODIES: dict[str, Request] = {
    "JSON": {"json": {"job_id": "j-9", "payload": "é" * 100}},
    "urlencoded": {"data": {"job_id": "j-9", "note": "a&b=c"}},
    "multipart": {
        "data": {
            "job_id": "j-9",
            "upload": (io.BytesIO(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40), "a.png"),
        }
    },
    "chunked": {
        "input_stream": io.BytesIO(b'{"job_id": "j-9"}'),
        "content_type": "application/json",
        "headers": {"Transfer-Encoding": "chunked"},
        "environ_overrides": {"wsgi.input_terminated": True},
    },
}
READS = ["stream", "wsgi-input", "data", "json", "form", "form-then-data", "files"]
for body_name, body in BODIES.items():
    for how in READS:
        for prefix in ("read", "ask-then"):
            REQUESTS[f"{body_name} body, {prefix} {how}"] = {
                "path": f"/{prefix}/{how}",
                "method": "POST",
                **body,
            }


def _environ(spec: Request) -> tuple[dict[str, Any], bytes]:
    spec = dict(spec)
    if "data" in spec and isinstance(spec["data"], dict):
        spec["data"] = {
            k: (io.BytesIO(v[0].getvalue()), v[1]) if isinstance(v, tuple) else v
            for k, v in spec["data"].items()
        }
    if "input_stream" in spec:
        spec["input_stream"] = io.BytesIO(spec["input_stream"].getvalue())
    overrides = spec.pop("environ_overrides", {})
    builder = EnvironBuilder(**spec)
    try:
        env = builder.get_environ()
    finally:
        builder.close()
    env.update(overrides)
    raw = env["wsgi.input"].read()
    return env, raw


def _call(app: Flask, env: dict[str, Any], raw: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    env = dict(env)
    env["wsgi.input"] = io.BytesIO(raw)
    try:
        app_iter, status, headers = run_wsgi_app(app, env, buffered=True)
    except Exception as exc:  # TESTING propagates the app's own errors: compare those too
        return f"raised {type(exc).__name__}", [], b""
    try:
        body = b"".join(app_iter)
    finally:
        close = getattr(app_iter, "close", None)
        if close is not None:
            close()
    return status, list(headers.items()), body


def _allowed(headers: list[tuple[str, str]], plain: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The observed headers without the documented additions."""
    app_set = {k.lower() for k, _ in plain}
    out = []
    for k, v in headers:
        low = k.lower()
        if low == "x-request-id" and "x-request-id" not in app_set:
            continue  # added by diaglog
        if low == "server-timing":
            if "server-timing" not in app_set:
                continue  # added by diaglog
            (app_value,) = [pv for pk, pv in plain if pk.lower() == "server-timing"]
            assert v.startswith(app_value + ", total;dur="), v  # merged, the app's entries first
            v = app_value
        out.append((k, v))
    return out


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> tuple[Flask, Flask, Path]:
    log_dir = tmp_path_factory.mktemp("transparency") / "logs"
    return build(None), build(log_dir), log_dir


@pytest.mark.parametrize("name", list(REQUESTS))
def test_a_response_is_the_same_byte_for_byte(apps: tuple[Flask, Flask, Path], name: str) -> None:
    plain_app, observed_app, _ = apps
    env, raw = _environ(REQUESTS[name])
    p_status, p_headers, p_body = _call(plain_app, env, raw)
    o_status, o_headers, o_body = _call(observed_app, env, raw)
    assert o_status == p_status
    assert o_body == p_body
    assert _allowed(o_headers, p_headers) == p_headers
    if p_status.startswith("raised"):
        return
    assert sum(k.lower() == "x-request-id" for k, _ in o_headers) == 1
    assert sum(k.lower() == "server-timing" for k, _ in o_headers) == 1


def test_the_apps_own_request_id_wins_and_the_lines_keep_diaglogs(
    make_app: Callable[..., Flask], logs: Logs
) -> None:
    """An app that sets X-Request-ID sends exactly its own; the lines carry the request id
    diaglog assigned when the request arrived (the client's, when it sent a valid one)."""
    app = make_app({"DIAGLOG_FORMAT": "json"})
    app.add_url_rule("/own", "own", lambda: ("ok", 200, {"X-Request-ID": "app-1"}))
    r = app.test_client().get("/own", headers={"X-Request-ID": "client-1"})
    assert r.headers.getlist("X-Request-ID") == ["app-1"]
    (end,) = logs.events("requests", "request_end")
    assert end["request_id"] == "client-1"


def test_every_request_has_one_start_and_one_end_line(tmp_path: Path) -> None:
    app = build(tmp_path / "logs")
    for spec in REQUESTS.values():
        _call(app, *_environ(spec))
    lines = Logs(tmp_path / "logs").lines("requests")
    assert sum(" | request_start " in line for line in lines) == len(REQUESTS)
    assert sum(" | request_end " in line for line in lines) == len(REQUESTS)


def test_a_slow_upload_is_in_flight_before_its_body_arrives(
    make_app: Callable[..., Flask], logs: Logs
) -> None:
    """The start line is written, and the request is in flight, before a byte of the body is
    read: a client that sends its headers and then stalls is visible at once."""
    app = make_app()

    @app.post("/upload")
    def upload() -> str:
        return _digest(request.get_data())

    body = json.dumps({"job_id": "slow-1", "pad": "x" * 1000}).encode()
    with serve_in_thread(app) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(
                b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:10]
            )
            deadline = time.monotonic() + 10
            while not inflight(app) and time.monotonic() < deadline:
                time.sleep(0.01)
            (entry,) = inflight(app)
            assert entry["path"] == "/upload"
            assert "request_start POST /upload" in logs.text("requests")
            assert "request_end" not in logs.text("requests")
            conn.sendall(body[10:])
            chunks = []
            while chunk := conn.recv(65536):  # the server closes the connection (HTTP/1.0 style)
                chunks.append(chunk)
            reply = b"".join(chunks).decode()
    assert reply.startswith("HTTP/1.1 200") and _digest(body) in reply
    # The view read the body, so the end line carries the job id the body gave.
    assert "job=slow-1 | request_end POST /upload 200" in logs.text("requests")


def _raw_status(base: str, request_bytes: bytes) -> str:
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request_bytes)
        conn.shutdown(socket.SHUT_WR)  # the rest of the declared body never comes
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).split(b"\r\n", 1)[0].decode()


@pytest.mark.parametrize("path", ["/ignore-body", "/ask-then/json", "/read/json"])
def test_a_declared_length_that_never_comes_is_answered_as_without_diaglog(
    tmp_path: Path, path: str
) -> None:
    raw = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 100\r\n\r\n"
    ).encode() + b'{"job_id":'
    answers = []
    for log_dir in (None, tmp_path / "logs"):
        with serve_in_thread(build(log_dir)) as base:
            answers.append(_raw_status(base, raw))
    assert answers[0] == answers[1]
    assert not answers[1].startswith("HTTP/1.1 5")
    assert f"request_end POST {path} " in (tmp_path / "logs" / "requests.log").read_text()
