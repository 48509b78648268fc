"""The example app's live page (example_app/live_page.py): auth by session, and in Chromium the
stages of one job appear while the job runs."""

from __future__ import annotations

import contextlib
import io
import os
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask_socketio import SocketIO
from playwright.sync_api import Browser
from servers import gunicorn, serve_in_thread

from docs import docs_section
from example_app.live_page import allow_live, bp
from flask_diaglog import DiagLog, stage
from flask_diaglog.live import get_bridge

NS = "/diaglog"
STAGES = ("validate", "preprocess", "generate", "postprocess")


def build(
    make_app: Callable[..., Flask], gate: threading.Event, **config: Any
) -> tuple[Flask, SocketIO]:
    """The wiring the example app uses: SocketIO first, DiagLog(live_auth=allow_live), bp."""
    app = make_app({"DIAGLOG_LIVE": True, "SECRET_KEY": "example", **config}, init=False)
    socketio = SocketIO(app, async_mode="threading")
    diaglog = DiagLog(app, live_auth=allow_live)
    app.register_blueprint(bp)

    def job() -> None:
        for i, name in enumerate(STAGES):
            with stage(name):
                app.logger.info("%s running", name)
            if i == 0:
                assert gate.wait(30)  # the test looks at the page in between

    @app.post("/run/<job_id>")
    def run(job_id: str) -> tuple[dict[str, Any], int]:
        diaglog.spawn(job)
        return {"job_id": job_id}, 202

    return app, socketio


def test_page_renders_and_serves_the_vendored_client(make_app: Callable[..., Flask]) -> None:
    """/live renders the page with the namespace and the vendored socket.io client."""
    app, _ = build(make_app, threading.Event())
    client = app.test_client()
    page = client.get("/live")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert '/live/static/socket.io.min.js"' in html and 'io("/diaglog", ' in html
    js = client.get("/live/static/socket.io.min.js")
    assert js.status_code == 200 and b"Socket.IO v4" in js.data
    js.close()
    bridge = get_bridge(app)
    assert bridge is not None
    bridge.close()


def test_only_browsers_that_opened_the_page_are_admitted(make_app: Callable[..., Flask]) -> None:
    """allow_live admits a client whose handshake carries the page's session cookie only."""
    gate = threading.Event()
    gate.set()
    app, socketio = build(make_app, gate)
    stranger = socketio.test_client(app, namespace=NS, flask_test_client=app.test_client())
    assert not stranger.is_connected(NS)
    client = app.test_client()
    client.get("/live")
    viewer = socketio.test_client(app, namespace=NS, flask_test_client=client)
    bridge = get_bridge(app)
    assert bridge is not None
    try:
        assert viewer.is_connected(NS)
        viewer.emit("subscribe", {"job_id": "p-1"}, namespace=NS, callback=True)
        client.post("/run/p-1")
        assert bridge.flush(10)
        # the job thread may still be finishing: wait for its end event to be emitted
        received: list[dict[str, Any]] = []
        for _ in range(200):
            received += [p["args"][0] for p in viewer.get_received(NS)]
            if any(e["event"] == "job_end" for e in received):
                break
            threading.Event().wait(0.05)
            bridge.flush(10)
        stages = [e["stage"] for e in received if e["event"] == "stage"]
        assert stages == list(STAGES)
    finally:
        viewer.disconnect(NS)
        bridge.close()


def test_example_app_visitors_follow_only_their_own_uploads(tmp_path: Path) -> None:
    """The example app as ``--host 0.0.0.0`` runs it (a dashboard token): a visitor who opened
    /live may follow the jobs of images this browser session uploaded, and nothing else: not
    ``all``, not a level, not another session's job or request. The dashboard token's holder
    still gets everything."""
    from example_app import create_app
    from example_app.__main__ import demo_config

    config = demo_config("0.0.0.0", environ={})
    app = create_app(
        {
            **config,
            "TESTING": True,
            "DIAGLOG_CONSOLE": False,
            "DIAGLOG_LIVE": True,
            "DIAGLOG_LOG_DIR": str(tmp_path / "logs"),
            "EXAMPLE_GENERATE_SECONDS": 0.05,
        }
    )
    socketio = app.extensions["socketio"]
    bridge = get_bridge(app)
    assert bridge is not None
    clients = []

    def visitor() -> tuple[Any, Any, str]:
        """A browser that opened /live, its socket, and the job of the image it uploaded."""
        http = app.test_client()
        assert http.get("/live").status_code == 200
        sock = socketio.test_client(app, namespace=NS, flask_test_client=http)
        clients.append(sock)
        assert sock.is_connected(NS)
        up = http.post("/api/images", data={"image": (io.BytesIO(tiny_png()), "in.png")})
        assert up.status_code == 201
        return http, sock, up.json["job_id"]

    def ask(sock: Any, **what: Any) -> Any:
        return sock.emit("subscribe", what, namespace=NS, callback=True)

    try:
        alice, alice_sock, alice_job = visitor()
        _, mallory_sock, mallory_job = visitor()
        assert ask(alice_sock, job_id=alice_job) == {"ok": True, "rooms": [f"job:{alice_job}"]}
        assert ask(mallory_sock, job_id=mallory_job)["ok"] is True
        for what in (
            {"all": True},
            {"level": "DEBUG"},
            {"job_id": alice_job},
            {"request_id": "any-request"},
        ):
            answer = ask(mallory_sock, **what)
            assert answer["ok"] is False and "not allowed" in answer["error"], what
        stranger = socketio.test_client(app, namespace=NS, flask_test_client=app.test_client())
        assert not stranger.is_connected(NS)  # never opened /live
        operator = socketio.test_client(
            app,
            namespace=NS,
            query_string=f"token={config['DIAGLOG_DASHBOARD_TOKEN']}",
            flask_test_client=app.test_client(),
        )
        clients.append(operator)
        assert ask(operator, all=True) == {"ok": True, "rooms": ["all"]}

        gen = alice.post(f"/api/jobs/{alice_job}/generate", json={})
        assert gen.status_code == 202
        got: list[dict[str, Any]] = []
        for _ in range(400):
            assert bridge.flush(10)
            got += [p["args"][0] for p in alice_sock.get_received(NS)]
            if any(e["event"] == "job_end" for e in got):
                break
            threading.Event().wait(0.05)
        stages = [e["stage"] for e in got if e["event"] == "stage"]
        assert [s for s in stages if s in STAGES] == list(STAGES)
        assert {e["job_id"] for e in got} == {alice_job}
        assert alice_job in {p["args"][0].get("job_id") for p in operator.get_received(NS)}
        # Mallory hears her own upload's last line at most, nothing of Alice's job
        assert {p["args"][0]["job_id"] for p in mallory_sock.get_received(NS)} <= {mallory_job}
    finally:
        for sock in clients:
            if sock.is_connected(NS):
                sock.disconnect(NS)
        bridge.close()
        app.extensions["example_jobs"].close()
        app.extensions["diaglog"].guard.close()


def _close_bridge(app: Flask) -> None:
    bridge = get_bridge(app)
    if bridge is not None:
        bridge.close()


@pytest.fixture
def served(make_app: Callable[..., Flask]) -> Iterator[tuple[str, threading.Event]]:
    gate = threading.Event()
    app, _ = build(make_app, gate)
    try:
        with serve_in_thread(app) as base:
            try:
                yield base, gate
            finally:
                gate.set()  # let a job still waiting on the gate finish
    finally:
        _close_bridge(app)


@pytest.mark.slow
def test_page_in_chromium_shows_stages_as_they_happen(
    served: tuple[str, threading.Event], tmp_path: Path, browser: Browser
) -> None:
    """In Chromium, the first stage shows while the job still runs, then the rest and the end."""

    base, gate = served
    page = browser.new_page()
    page.goto(f"{base}/live")
    page.wait_for_function("document.getElementById('conn').textContent === 'connected'")
    page.fill("#job", "browser-job")
    page.click("#follow")
    page.wait_for_function("document.getElementById('status').textContent === 'waiting for events'")
    req = urllib.request.Request(f"{base}/run/browser-job", method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 202
    first = page.locator("#stages li", has_text="validate")
    first.wait_for(timeout=15_000)
    assert page.locator("#stages li").count() == 1  # the job is held after stage 1
    assert page.eval_on_selector("#progress", "el => el.value") == 1
    shots = Path(os.environ.get("LIVE_SCREENSHOTS", str(tmp_path)))
    page.screenshot(path=str(shots / "live-running.png"))
    gate.set()
    page.wait_for_function(
        "document.getElementById('status').textContent.startsWith('done')",
        timeout=15_000,
    )
    names = page.locator("#stages li").all_text_contents()
    assert [n.split(" ")[0] for n in names] == list(STAGES)
    assert page.eval_on_selector("#progress", "el => el.value") == 4
    assert "postprocess running" in (page.text_content("#console") or "")
    page.screenshot(path=str(shots / "live-done.png"))


def tiny_png(width: int = 24, height: int = 24) -> bytes:
    """A valid grayscale PNG."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(
        b"\0" + bytes((x * 7 + y * 3) % 256 for x in range(width)) for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@contextlib.contextmanager
def serve_example(tmp_path: Path, **config: Any) -> Iterator[str]:
    """The example app itself, served on a free port."""
    from example_app import create_app

    app = create_app({"DIAGLOG_LOG_DIR": str(tmp_path / "logs"), **config})
    assert "socketio" in app.extensions and "live" in app.blueprints
    try:
        with serve_in_thread(app) as base:
            yield base
    finally:
        _close_bridge(app)


@pytest.fixture
def example_served(tmp_path: Path) -> Iterator[str]:
    with serve_example(tmp_path, EXAMPLE_GENERATE_SECONDS=0.5) as base:
        yield base


@pytest.mark.slow
def test_example_app_page_uploads_and_follows_a_generation(
    example_served: str, tmp_path: Path, browser: Browser
) -> None:
    """In the example app, the page uploads an image, starts the job and shows all its stages."""

    image = tmp_path / "photo.png"
    image.write_bytes(tiny_png())
    page = browser.new_page()
    page.goto(f"{example_served}/live")
    page.wait_for_function("document.getElementById('conn').textContent === 'connected'")
    page.set_input_files("#image", str(image))
    page.click("#start")
    page.locator("#stages li", has_text="preprocess").wait_for(timeout=15_000)
    page.wait_for_function(
        "document.getElementById('status').textContent.startsWith('done')",
        timeout=30_000,
    )
    names = page.locator("#stages li").all_text_contents()
    assert [n.split(" ")[0] for n in names] == list(STAGES)
    href = page.get_attribute("#result-link", "href") or ""
    with urllib.request.urlopen(example_served + href, timeout=10) as resp:
        assert resp.read().startswith(b"v ")


def progress_value(page: Any) -> float:
    return float(page.eval_on_selector("#job-progress", "el => el.value"))


@pytest.mark.slow
def test_example_app_page_shows_the_jobs_progress_bar_moving(
    tmp_path: Path, browser: Browser
) -> None:
    """Under the live pane, the progress bar follows the pipeline's progress events: it shows a
    part done while the job runs, then more, then all of it."""
    image = tmp_path / "photo.png"
    image.write_bytes(tiny_png())
    config = {"EXAMPLE_GENERATE_SECONDS": 4.0, "DIAGLOG_PROGRESS_INTERVAL": 0.2}
    with serve_example(tmp_path, **config) as base:
        page = browser.new_page()
        page.goto(f"{base}/live")
        page.wait_for_function("document.getElementById('conn').textContent === 'connected'")
        assert progress_value(page) == 0
        page.set_input_files("#image", str(image))
        page.click("#start")
        bar = "document.getElementById('job-progress').value"
        page.wait_for_function(f"{bar} > 0 && {bar} < 1", timeout=15_000)
        first = progress_value(page)
        page.wait_for_function(f"{bar} > {first} && {bar} < 1", timeout=15_000)
        assert page.text_content("#status") == "running"  # it moved while the job ran
        assert "mesh row" in (page.text_content("#work-text") or "")
        shots = Path(os.environ.get("LIVE_SCREENSHOTS", str(tmp_path)))
        page.screenshot(path=str(shots / "live-progress.png"))
        page.wait_for_function(
            "document.getElementById('status').textContent.startsWith('done')", timeout=30_000
        )
        assert progress_value(page) == 1
        assert (page.text_content("#work-text") or "").startswith("100 %")


@pytest.mark.slow
def test_example_app_page_under_two_gunicorn_workers(
    tmp_path: Path, redis_url: str, browser: Browser
) -> None:
    """The deployment of docs/deployment.md: under gunicorn -w 2 -k gthread with Redis, the page
    uploads, starts and follows a job to its end, whichever workers answer each part."""
    image = tmp_path / "photo.png"
    image.write_bytes(tiny_png())
    root = Path(__file__).resolve().parent.parent
    env = {
        "DIAGLOG_JOB_STORE": redis_url,
        "DIAGLOG_LIVE_QUEUE": redis_url,
        "DIAGLOG_LOG_DIR": str(tmp_path / "logs"),
        "DIAGLOG_PROGRESS_INTERVAL": "0.2",
        "SECRET_KEY": "one-key-for-all-workers",
    }
    spec = "example_app:create_app({'EXAMPLE_GENERATE_SECONDS': 2.0})"
    with gunicorn(
        spec, workers=2, worker_class="gthread", threads=8, env=env, cwd=root, pythonpath=root,
        ready_path="/healthz",
    ) as base:  # fmt: skip
        page = browser.new_page()
        page.goto(f"{base}/live")
        page.wait_for_function("document.getElementById('conn').textContent === 'connected'")
        page.set_input_files("#image", str(image))
        page.click("#start")
        page.wait_for_function(
            "document.getElementById('status').textContent.startsWith('done')", timeout=30_000
        )
        names = page.locator("#stages li").all_text_contents()
        assert [n.split(" ")[0] for n in names] == list(STAGES)
        assert progress_value(page) == 1


@pytest.mark.slow
def test_documented_js_client_follows_a_job(
    make_app: Callable[..., Flask], browser: Browser
) -> None:
    """The docs' JavaScript client, run as written in Chromium, lists a job's stages."""
    import re

    section = docs_section("live.md", "## A JavaScript client")
    found = re.search(r"```html\n(.*?)```", section, flags=re.S)
    assert found is not None
    gate = threading.Event()
    gate.set()
    app, _ = build(make_app, gate, DIAGLOG_LIVE_TOKEN="doc-token-0123456789")
    html = found.group(1).replace('token: "..."', 'token: "doc-token-0123456789"')
    html = html.replace("/static/socket.io.min.js", "/live/static/socket.io.min.js")
    assert "doc-token-0123456789" in html

    @app.get("/doc-client")
    def doc_client() -> str:
        return f"<!doctype html><meta charset=utf-8><body>{html}</body>"

    try:
        with serve_in_thread(app) as base:
            page = browser.new_page()
            page.goto(f"{base}/doc-client")
            page.wait_for_function("typeof socket !== 'undefined' && socket.connected")
            # the page subscribes on connect; wait for a subscription to be acknowledged
            page.evaluate("() => socket.emitWithAck('subscribe', {job_id: 'job-1'})")
            req = urllib.request.Request(f"{base}/run/job-1", method="POST")
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.status == 202
            page.wait_for_function(
                "document.querySelectorAll('#stages li').length === 4", timeout=15_000
            )
            names = page.locator("#stages li").all_text_contents()
            assert [n.split(" ")[0] for n in names] == list(STAGES)
            assert page.eval_on_selector("#bar", "el => el.value") == 4
    finally:
        _close_bridge(app)
