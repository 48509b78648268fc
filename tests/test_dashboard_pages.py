"""The dashboard's pages in a real headless Chromium: they render, filter, draw, update, escape.

``DASHBOARD_SCREENSHOTS=docs/_static pytest tests/test_dashboard_pages.py -k screenshots``
writes the screenshots shown in docs/dashboard.md.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from playwright.sync_api import Browser, Page
from servers import serve_in_thread

import flask_diaglog.dashboard as dashboard
from flask_diaglog import DiagLog, progress, stage

pytestmark = pytest.mark.slow

XSS_SCRIPT = "<script>window.__xss = 'script'</script>"
XSS_IMG = '"><img src=x onerror="window.__xss = \'img\'">'


@dataclass
class Site:
    base: str
    release: threading.Event
    log_dir: Path

    def get(self, path: str, **headers: str) -> Any:
        req = urllib.request.Request(self.base + path, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            with e:
                return e.read()

    def api(self, path: str) -> Any:
        return json.loads(self.get("/_diaglog/api/" + path))


def _build(log_dir: Path, tmp_path: Path, release: threading.Event, **config: Any) -> Flask:
    app = Flask("pages", instance_path=str(tmp_path / "instance"))
    app.config.update(
        DIAGLOG_LOG_DIR=str(log_dir),
        DIAGLOG_FORMAT="json",
        DIAGLOG_DASHBOARD=True,
        DIAGLOG_HANG_AFTER=0.3,
        DIAGLOG_PROGRESS_INTERVAL=0,
        **config,
    )
    diaglog = DiagLog(app)

    @app.get("/orders/<int:n>")
    def orders(n: int) -> str:
        with stage("load"):
            time.sleep(0.01)
            with stage("query"):
                time.sleep(0.02)
        with stage("render"):
            time.sleep(0.005 * (1 + n % 4))
        if n % 3 == 0:
            app.logger.warning("order %d took the slow path", n)
        return "ok"

    @app.post("/reports/<job_id>")
    def report(job_id: str) -> tuple[str, int]:
        def build(fail: bool) -> None:
            for step in range(1, 5):
                with stage(f"part{step}"):
                    time.sleep(0.003)
                progress(step, 4, f"part {step} of 4")
            if fail:
                raise RuntimeError("report " + job_id + " failed")

        diaglog.spawn(build, job_id.endswith("bad")).join()
        return job_id, 202

    @app.get("/boom")
    def boom() -> str:
        raise ValueError("card declined")

    @app.get("/x/<path:anything>")
    def anything(anything: str) -> str:
        app.logger.warning("echo %s %s", XSS_SCRIPT, XSS_IMG)
        if "raise" in anything:
            raise ValueError(XSS_SCRIPT + XSS_IMG)
        return "ok"

    @app.get("/hang/<job_id>")
    def hang(job_id: str) -> str:
        with stage("waiting"):
            release.wait(30)  # <script>window.__xss = 'stack'</script>"><img src=x onerror=1>
        return "done"

    @app.get("/slow/<job_id>")
    def slow(job_id: str) -> str:
        with stage("generate"):
            release.wait(30)
        return "done"

    return app


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    release = threading.Event()
    log_dir = tmp_path / "logs"
    app = _build(log_dir, tmp_path, release)
    client = app.test_client()
    for n in range(24):
        client.get(f"/orders/{n}")
    client.get("/boom")
    client.post("/reports/R-ok")
    client.post("/reports/R-bad")
    with serve_in_thread(app) as base:
        try:
            yield Site(base, release, log_dir)
        finally:
            release.set()


def _page(browser: Browser) -> Page:
    return browser.new_page(viewport={"width": 1280, "height": 900})


def _shots(tmp_path: Path) -> Path:
    return Path(os.environ.get("DASHBOARD_SCREENSHOTS", str(tmp_path)))


def test_each_page_renders(site: Site, browser: Browser) -> None:
    """Overview, list, route and trace pages render their tables and charts."""
    page = _page(browser)
    page.goto(site.base + "/_diaglog/")
    assert page.locator("#charts svg.chart").count() == 3
    assert page.locator("#routes tbody tr").first.text_content().strip().startswith("GET /orders")  # type: ignore[union-attr]
    assert page.locator("#recent tbody tr").count() == 20
    page.click("text=Requests and jobs")
    assert (
        page.locator("#items tbody tr").count() == 29
    )  # 24 orders, /boom, 2 reports and their 2 jobs
    page.goto(site.base + "/_diaglog/")
    page.locator("#routes a", has_text="GET /orders/<int:n>").click()
    assert page.locator("#route-name").text_content() == "GET /orders/<int:n>"
    assert page.locator("svg.histogram rect.bin").count() == 15
    assert page.locator("#route-stats svg.chart").count() == 4
    page.goto(site.base + "/_diaglog/trace/R-bad")
    assert page.locator("section.item").count() == 2
    assert "RuntimeError: report R-bad failed" in page.locator("details.traceback pre").inner_text()
    assert page.locator("section.job progress").get_attribute("value") == "1.0"


def test_filters_change_the_rows(site: Site, browser: Browser) -> None:
    """Choosing filters in the form narrows the rows, and the filters are in the URL."""
    page = _page(browser)
    page.goto(site.base + "/_diaglog/requests")
    assert page.locator("#items tbody tr").count() == 29
    page.select_option("select[name=status]", "5xx")
    page.click("button[type=submit]")
    page.wait_for_url("**status=5xx**")
    rows = page.locator("#items tbody tr")
    assert rows.count() == 1 and "/boom" in (rows.first.text_content() or "")
    page.goto(site.base + "/_diaglog/requests?kind=job&q=failed")
    assert [r.strip() for r in page.locator("#items td.jid").all_text_contents()] == ["R-bad"]
    page.goto(site.base + "/_diaglog/requests?per_page=10&page=3")
    assert page.locator("#items tbody tr").count() == 9
    page.click("#prev")
    page.wait_for_url("**page=2**")  # loaded: count() does not wait for the new page
    assert page.locator("#items tbody tr").count() == 10


def test_waterfall_has_one_bar_per_stage_proportional_to_durations(
    site: Site, browser: Browser
) -> None:
    """Each stage is one bar, nested stages deeper, widths in proportion to their durations."""
    rid = site.api("requests?route=GET%20/orders/%3Cint:n%3E&per_page=1")["items"][0]["request_id"]
    page = _page(browser)
    page.goto(site.base + f"/_diaglog/trace/{rid}")
    bars = page.locator("svg.waterfall rect.bar.stage")
    assert bars.count() == 3
    stages = [bars.nth(i).get_attribute("data-stage") for i in range(3)]
    assert stages == ["load", "load.query", "render"]
    assert [bars.nth(i).get_attribute("data-depth") for i in range(3)] == ["0", "1", "0"]
    total = page.locator("svg.waterfall rect.bar.total")
    per_ms = float(total.get_attribute("width") or 0) / float(total.get_attribute("data-ms") or 1)
    for i in range(3):
        box = bars.nth(i).bounding_box()
        assert box is not None
        width = float(bars.nth(i).get_attribute("width") or 0)
        ms = float(bars.nth(i).get_attribute("data-ms") or 0)
        assert width == pytest.approx(ms * per_ms, rel=0.01)
    widths = [bars.nth(i).bounding_box()["width"] for i in range(3)]  # type: ignore[index]
    load, query = (float(bars.nth(i).get_attribute("data-ms") or 0) for i in range(2))
    assert widths[0] / widths[1] == pytest.approx(load / query, rel=0.02)


def test_live_rows_and_inflight_appear_without_reload(site: Site, browser: Browser) -> None:
    """The open overview shows a running request with its stage, then it as a finished row."""
    page = _page(browser)
    page.goto(site.base + "/_diaglog/")
    page.evaluate("window.__loaded_once = true")
    slow = threading.Thread(target=site.get, args=("/slow/JOB-42",))
    slow.start()
    try:
        row = page.locator("#inflight tbody tr", has_text="/slow/JOB-42")
        row.wait_for(timeout=15_000)
        assert row.locator("td.stage").text_content() == "generate"
        assert page.locator("#inflight-count").text_content() == "1"
    finally:
        site.release.set()
        slow.join(30)
    done = page.locator("td.status", has_text="200")
    recent = page.locator("#recent tbody tr", has_text="/slow/JOB-42", has=done)
    recent.wait_for(timeout=15_000)
    assert "generate" in (recent.locator("td.stages").text_content() or "")
    page.locator("#inflight-empty:not(.hidden)").wait_for(timeout=15_000)
    assert page.evaluate("window.__loaded_once") is True  # the same document: no reload


def test_live_updates_survive_rotation(tmp_path: Path, browser: Browser) -> None:
    """Requests logged across many rotations all appear on the open list, once each."""
    release = threading.Event()
    log_dir = tmp_path / "logs"
    app = _build(log_dir, tmp_path, release, DIAGLOG_MAX_BYTES=4000, DIAGLOG_BACKUP_COUNT=100)
    with serve_in_thread(app) as base:
        page = _page(browser)
        page.goto(base + "/_diaglog/requests?route=GET%20/orders/%3Cint:n%3E&per_page=100")
        for n in range(40):
            urllib.request.urlopen(f"{base}/orders/{n}", timeout=30).read()
        page.locator("#total", has_text="40").wait_for(timeout=20_000)
        assert len(list(log_dir.glob("requests.log.*"))) >= 5
        paths = page.locator("#items td.path").all_text_contents()
        assert sorted(paths) == sorted(f"/orders/{n}" for n in range(40))


def test_what_the_page_cannot_show_is_said_without_reload(site: Site, browser: Browser) -> None:
    """A FIFO named like a backup and a garbled state file of another worker, appearing while
    the list is open, are named in the notice at the top of the page, without a reload."""
    page = _page(browser)
    page.goto(site.base + "/_diaglog/requests")
    assert page.locator("#not-shown").count() == 0
    page.evaluate("window.__loaded_once = true")
    os.mkfifo(site.log_dir / "jobs.log.1")
    (site.log_dir / "inflight-evil-2.json").write_text("{")
    page.locator("#not-shown #unreadable").wait_for(timeout=15_000)
    page.locator("#not-shown #ignored").wait_for(timeout=15_000)
    text = page.locator("#not-shown").inner_text()
    assert "skipped, cannot be read: jobs.log.1 (not a regular file)" in text
    assert "ignored, not a worker's in-flight state file: inflight-evil-2.json" in text
    assert page.locator("#items tbody tr").count() == 29  # the rows are all still there
    assert page.evaluate("window.__loaded_once") is True


def test_the_page_of_an_id_not_logged_yet_fills_in(site: Site, browser: Browser) -> None:
    """The trace page of an id no line names is a 404 page that says so; it keeps refreshing
    without claiming it cannot, and shows the request once one with that id is logged."""
    page = _page(browser)
    answer = page.goto(site.base + "/_diaglog/trace/later-1")
    assert answer is not None and answer.status == 404
    assert page.locator("#not-found").inner_text() == "No line of the log files names later-1."
    page.evaluate("window.__loaded_once = true")
    page.locator("#status", has_text="live, checked").wait_for(timeout=15_000)
    assert page.locator("#status").get_attribute("class") == "muted"
    site.get("/orders/7", **{"X-Request-ID": "later-1"})
    page.locator("section.item.request").wait_for(timeout=15_000)
    assert "GET /orders/7" in page.locator("section.item.request h3").inner_text()
    assert page.evaluate("window.__loaded_once") is True


def test_no_script_runs_from_logged_values(site: Site, browser: Browser) -> None:
    """Script and attribute payloads in paths, headers, ids, messages and stacks stay text."""
    quoted = urllib.parse.quote(XSS_SCRIPT + XSS_IMG, safe="")
    site.get(f"/x/{quoted}", **{"Content-Type": XSS_IMG, "X-Request-ID": XSS_SCRIPT})
    site.get(f"/x/raise{quoted}")
    forged = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S.000+00:00", time.gmtime()),
        "level": "ERROR", "event": "request_end", "logger": "flask_diaglog.request",
        "msg": XSS_SCRIPT, "request_id": XSS_IMG, "job_id": XSS_SCRIPT, "method": XSS_IMG,
        "path": XSS_SCRIPT, "status": 500, "duration_ms": 1.0, "stages": {XSS_IMG: 1.0},
    }  # fmt: skip
    with open(site.log_dir / "requests.log", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(forged) + "\n")
    hung = threading.Thread(target=site.get, args=("/hang/H-1",))
    hung.start()
    page = _page(browser)
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text))
    try:
        deadline = time.monotonic() + 15
        hung_rows: list[Any] = []
        while not hung_rows and time.monotonic() < deadline:
            time.sleep(0.1)
            hung_rows = [i for i in site.api("requests?q=/hang/H-1")["items"] if i.get("hung")]
        assert hung_rows, "no hang report within 15 s"
        hung_page = f"/_diaglog/trace/{hung_rows[0]['request_id']}"
        rids = [i["request_id"] for i in site.api("requests?q=/x/&per_page=10")["items"]]
        urls = [
            "/_diaglog/",
            "/_diaglog/requests?q=" + urllib.parse.quote(XSS_IMG),
            "/_diaglog/route?route=" + urllib.parse.quote("GET " + XSS_SCRIPT),
            *(f"/_diaglog/trace/{rid}" for rid in rids),
            hung_page,
        ]
        for url in urls:
            page.goto(site.base + url)
            page.wait_for_timeout(100)
            assert page.evaluate("window.__xss") is None, url
            assert page.locator("img[src=x]").count() == 0, url
            assert page.locator("script").count() == 1, url  # dashboard.js only
        page.goto(site.base + hung_page)
        assert "window.__xss = 'stack'" in page.locator("details.hang pre").first.inner_text()
        page.goto(site.base + "/_diaglog/")
        assert XSS_SCRIPT in (page.locator("#recent").inner_text())
    finally:
        site.release.set()
        hung.join(30)
    assert not [m for m in console if "Content Security Policy" in m]  # escaped, not just blocked


def test_a_token_leaves_the_address_bar_and_every_fetch(
    tmp_path: Path, browser: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opened with ``?token=`` as the docs say, the page's address bar has no token (the server
    redirected to its URL without it, the other parameters kept), and none of the page's own
    fetches carries one, even after a token is put back into the address bar."""
    monkeypatch.setattr(dashboard, "LIVE_MS", 300)
    token = "pages-token-1234"
    app = _build(tmp_path / "logs", tmp_path, threading.Event(), DIAGLOG_DASHBOARD_TOKEN=token)
    app.test_client().get("/orders/1")
    with serve_in_thread(app) as base:
        page = _page(browser)
        asked: list[str] = []
        page.on("request", lambda r: asked.append(r.url))
        tokened = base + f"/_diaglog/requests?kind=request&token={token}&per_page=10"
        page.goto(tokened)
        assert page.url == base + "/_diaglog/requests?kind=request&per_page=10"
        assert page.locator("#items tbody tr").count() == 1
        page.locator("#status", has_text="live").wait_for(timeout=15_000)  # a refresh ran
        # An address bar with a token again (a page from before this fix, a pasted link):
        page.evaluate(f"history.replaceState(null, '', location.pathname + '?token={token}')")
        with page.expect_request(lambda r: "/_diaglog/requests" in r.url, timeout=15_000) as req:
            pass
        assert token not in req.value.url and token not in page.url
        page.wait_for_timeout(700)  # a few more refreshes
        assert [u for u in asked if token in u] == [tokened]  # the one the test opened


def test_a_refused_page_stops_refreshing(
    tmp_path: Path, browser: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An open page whose refresh is refused (its cookie expired, the token changed) says so and
    asks no more: a page left open never keeps presenting a refused credential, which counts
    against its address (docs/dashboard.md, "Access")."""
    monkeypatch.setattr(dashboard, "LIVE_MS", 200)
    token = "pages-token-1234"
    app = _build(tmp_path / "logs", tmp_path, threading.Event(), DIAGLOG_DASHBOARD_TOKEN=token)
    with serve_in_thread(app) as base:
        page = _page(browser)
        refused: list[str] = []
        page.on("response", lambda r: refused.append(r.url) if r.status == 403 else None)
        page.goto(base + f"/_diaglog/requests?token={token}")
        page.locator("#status", has_text="live").wait_for(timeout=15_000)  # a refresh ran
        page.context.clear_cookies()
        host = urllib.parse.urlsplit(base).hostname
        stale = {"name": "diaglog_dashboard", "value": "1.0", "domain": host, "path": "/_diaglog"}
        page.context.add_cookies([stale])  # type: ignore[list-item]
        page.locator("#status.problem", has_text="refused").wait_for(timeout=15_000)
        page.wait_for_timeout(1000)  # five refreshes' worth
        assert refused == [base + "/_diaglog/requests"]


def test_screenshots_of_each_page(site: Site, browser: Browser, tmp_path: Path) -> None:
    """Screenshots for the docs: overview with work in flight, list, route and trace pages."""
    shots = _shots(tmp_path)
    page = _page(browser)
    slow = threading.Thread(target=site.get, args=("/slow/JOB-42",))
    slow.start()
    try:
        page.goto(site.base + "/_diaglog/")
        page.locator("#inflight tbody tr", has_text="/slow/JOB-42").wait_for(timeout=15_000)
        page.screenshot(path=str(shots / "dashboard-overview.png"), full_page=True)
    finally:
        site.release.set()
        slow.join(30)
    page.goto(site.base + "/_diaglog/requests?per_page=15")
    page.screenshot(path=str(shots / "dashboard-requests.png"), full_page=True)
    page.goto(site.base + "/_diaglog/route?route=" + urllib.parse.quote("GET /orders/<int:n>"))
    page.screenshot(path=str(shots / "dashboard-route.png"), full_page=True)
    rid = site.api("requests?route=GET%20/orders/%3Cint:n%3E&level=WARNING&per_page=1")["items"][0]
    page.goto(site.base + f"/_diaglog/trace/{rid['request_id']}")
    page.screenshot(path=str(shots / "dashboard-trace.png"), full_page=True)
    page.goto(site.base + "/_diaglog/trace/R-bad")
    page.screenshot(path=str(shots / "dashboard-job.png"), full_page=True)
    for name in ("overview", "requests", "route", "trace", "job"):
        assert (shots / f"dashboard-{name}.png").stat().st_size > 10_000
