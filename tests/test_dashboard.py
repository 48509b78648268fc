"""The dashboard: access rules, its API, and the page itself in a real headless Chromium."""

from __future__ import annotations

import os
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from playwright.sync_api import Browser
from servers import serve_in_thread

from flask_diaglog import stage


def _app(make_app: Callable[..., Flask], release: threading.Event, **config: object) -> Flask:
    app = make_app({"DIAGLOG_DASHBOARD": True, **config})

    @app.get("/slow/<job_id>")
    def slow(job_id: str) -> str:
        with stage("generate"):
            release.wait(30)
        return "done"

    app.add_url_rule("/fast", "fast", lambda: "ok")
    return app


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


def test_remote_clients_are_refused_without_token(make_app: Callable[..., Flask]) -> None:
    """Only loopback clients may see the dashboard when no token is configured."""
    app = _app(make_app, threading.Event())
    r = app.test_client().get("/_diaglog/", environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert r.status_code == 403 and r.mimetype == "application/problem+json"
    assert app.test_client().get("/_diaglog/").status_code == 200


def test_token_is_required_when_configured(make_app: Callable[..., Flask]) -> None:
    """With DIAGLOG_DASHBOARD_TOKEN, a wrong or missing token is refused; the right one works."""
    app = _app(make_app, threading.Event(), DIAGLOG_DASHBOARD_TOKEN="s3cret")
    client = app.test_client()
    assert client.get("/_diaglog/").status_code == 403
    assert client.get("/_diaglog/?token=nope").status_code == 403
    assert client.get("/_diaglog/api/state", headers={"Authorization": "Bearer s3cret"}).is_json
    assert client.get("/_diaglog/?token=s3cret").status_code == 200
    assert client.get("/_diaglog/api/state").status_code == 200  # the cookie remembers it


def test_bad_limit_is_a_400(make_app: Callable[..., Flask]) -> None:
    """A non-numeric limit gets a problem+json 400, not a 500."""
    app = _app(make_app, threading.Event())
    r = app.test_client().get("/_diaglog/api/state?limit=many")
    assert r.status_code == 400 and r.mimetype == "application/problem+json"


@pytest.fixture
def served(make_app: Callable[..., Flask]) -> Iterator[tuple[str, threading.Event]]:
    release = threading.Event()
    app = _app(make_app, release)
    with serve_in_thread(app) as base:
        try:
            yield base, release
        finally:
            release.set()  # let a request still in the view finish before the server stops


@pytest.mark.slow
def test_page_in_chromium_shows_inflight_then_recent(
    served: tuple[str, threading.Event], tmp_path: Path, browser: Browser
) -> None:
    """In a real browser the page shows the running request and its stage, then it as recent."""

    base, release = served
    page = browser.new_page()
    page.goto(f"{base}/_diaglog/")
    slow = threading.Thread(
        target=lambda: urllib.request.urlopen(f"{base}/slow/JOB-42", timeout=30).read()
    )
    slow.start()
    row = page.locator("#inflight tbody tr", has_text="/slow/JOB-42")
    row.wait_for(timeout=15_000)
    assert row.locator("td.stage").text_content() == "generate"
    assert page.locator("#inflight-count").text_content() == "1"
    shots = Path(os.environ.get("DASHBOARD_SCREENSHOTS", str(tmp_path)))
    page.screenshot(path=str(shots / "dashboard-inflight.png"))
    release.set()
    slow.join(30)
    recent = page.locator("#recent tbody tr", has_text="/slow/JOB-42")
    recent.wait_for(timeout=15_000)
    assert "200" in (recent.text_content() or "")
    assert "generate" in (recent.locator("td.stages").text_content() or "")
    page.locator("#inflight-empty").wait_for(state="visible", timeout=15_000)
    page.screenshot(path=str(shots / "dashboard-recent.png"))
