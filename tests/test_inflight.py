"""The in-flight registry empties itself on every way a request or job can end."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Logs
from flask import Flask, Response, abort

from flask_diaglog import DiagLog, inflight, stage
from flask_diaglog.stacks import thread_frames


@pytest.fixture(params=[True, False], ids=["testing", "production"])
def views_app(request: pytest.FixtureRequest, make_app: Callable[..., Flask]) -> Flask:
    """An app with views for every way of ending; TESTING on (exceptions propagate) and off."""
    app = make_app({"TESTING": request.param, "DIAGLOG_HANG_AFTER": 30}, init=False)
    diaglog = DiagLog(app)
    app.config["jobs"] = []

    @app.get("/ok")
    def ok() -> str:
        return "ok"

    @app.get("/boom")
    def boom() -> str:
        with stage("explode"):
            raise ValueError("boom")

    @app.get("/stream")
    def stream() -> Response:
        def gen() -> Iterator[str]:
            for i in range(1000):
                yield f"{i}\n"

        return Response(gen())

    @app.get("/stream-error")
    def stream_error() -> Response:
        def gen() -> Iterator[str]:
            yield "first\n"
            raise RuntimeError("broken mid-stream")

        return Response(gen())

    @app.get("/spawn-fail")
    def spawn_fail() -> str:
        def work() -> None:
            raise KeyError("job failed")

        app.config["jobs"].append(diaglog.spawn(work))
        return "started"

    return app


def call(app: Flask, path: str, **kw: Any) -> int | None:
    """Make a request, swallowing a propagated exception; the response is always closed."""
    client = app.test_client()
    try:
        resp = client.get(path, **kw)
    except Exception:
        return None
    try:
        resp.get_data()
    except Exception:
        return None
    finally:
        resp.close()
    return resp.status_code


def test_normal_request(views_app: Flask) -> None:
    """A plain request leaves nothing behind."""
    assert call(views_app, "/ok") == 200
    assert inflight(views_app) == []


def test_exception_in_view(views_app: Flask) -> None:
    """An exception in the view (500, or propagated when TESTING) leaves nothing behind."""
    status = call(views_app, "/boom")
    assert status == (None if views_app.testing else 500)
    assert inflight(views_app) == []


def test_early_closed_stream(views_app: Flask, logs: Logs) -> None:
    """A streamed response closed after one chunk ends the request (aborted)."""
    resp = views_app.test_client().get("/stream", buffered=False)
    assert len(inflight(views_app)) == 1  # still streaming
    next(iter(resp.response))
    resp.close()
    assert inflight(views_app) == []
    assert "aborted" in logs.lines("requests")[-1]


def test_stream_that_raises(views_app: Flask) -> None:
    """A stream whose generator raises mid-way ends the request."""
    call(views_app, "/stream-error")
    assert inflight(views_app) == []


def test_invalid_job_id_is_recorded_not_refused(views_app: Flask, logs: Logs) -> None:
    """An invalid job id on an unguarded view: served as without DiagLog; the entry is removed."""
    assert call(views_app, "/ok", headers={"X-Job-ID": "not valid!"}) == 200
    assert 'bad_job_id="not valid!"' in logs.lines("requests")[-1]
    assert inflight(views_app) == []


def test_not_found(views_app: Flask) -> None:
    """A 404 (routing error raised after the start line) leaves nothing behind."""
    assert call(views_app, "/missing") == 404
    assert inflight(views_app) == []


def test_abort_in_user_before_request(views_app: Flask) -> None:
    """abort() in the views_app's own before_request leaves nothing behind."""

    @views_app.before_request
    def deny() -> None:
        abort(403)

    assert call(views_app, "/ok") == 403
    assert inflight(views_app) == []


def test_exception_in_user_before_request(views_app: Flask) -> None:
    """An exception in the views_app's own before_request leaves nothing behind."""

    @views_app.before_request
    def fail() -> None:
        raise RuntimeError("before")

    call(views_app, "/ok")
    assert inflight(views_app) == []


def test_spawn_work_that_raises(views_app: Flask, logs: Logs) -> None:
    """Background work that raises is removed when it ends (job_end failed)."""
    assert call(views_app, "/spawn-fail") == 200
    for t in views_app.config["jobs"]:
        t.join(10)
    assert "job_end" in logs.text("jobs")
    assert inflight(views_app) == []


def test_registry_is_bounded(make_app: Callable[..., Flask], logs: Logs) -> None:
    """Past maxsize new work is counted, not stored, and reported once by the watchdog."""
    app = make_app({"DIAGLOG_HANG_AFTER": 0.1}, init=False)
    diaglog = DiagLog(app)
    # No setting sizes the registry, and 10 000 parked threads are too many for a test: shrink it.
    app.extensions["diaglog"].registry.maxsize = 2
    release = threading.Event()
    with app.app_context():
        threads = [diaglog.spawn(release.wait, 10) for _ in range(3)]
    try:
        deadline = time.monotonic() + 10
        while "registry full" not in logs.text("requests") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(inflight(app)) == 2
        time.sleep(0.3)  # a few more scans (hang_after is 0.1 s): the report is not repeated
        full = "in-flight registry full (2 entries): 1 requests or jobs were not tracked"
        assert logs.text("requests").count("in-flight registry full") == 1
        assert full in logs.text("requests")
    finally:
        release.set()
        for t in threads:
            t.join(10)
    assert inflight(app) == []


def test_disabled_app_has_no_registry(make_app: Callable[..., Flask]) -> None:
    """With DIAGLOG_ENABLED off, inflight(app) is simply empty."""
    app = make_app({"DIAGLOG_ENABLED": False})
    assert inflight(app) == []


def test_stage_totals_handed_out_are_copies(make_app: Callable[..., Flask], logs: Logs) -> None:
    """Changing what inflight() or get_request_timings() return changes nothing diaglog writes."""
    from flask_diaglog import get_request_timings

    app = make_app()

    @app.get("/")
    def index() -> str:
        with stage("db"):
            pass
        inflight(app)[0]["stages"]["db"] = 9999.0
        get_request_timings()["db"] = 8888.0
        return "ok"

    r = app.test_client().get("/")
    assert "9999" not in r.headers["Server-Timing"] and "8888" not in r.headers["Server-Timing"]
    end = next(line for line in logs.text("requests").splitlines() if "request_end" in line)
    assert "stages=db:" in end and "9999" not in end and "8888" not in end


_LISTING_UNDER_COLLECTIONS = """
import gc, sys, threading, time
from flask import Flask
from flask_diaglog import DiagLog, inflight

class Local(threading.local):
    pass

app = Flask("frames")
app.config["DIAGLOG_LOG_DIR"] = sys.argv[1]
stop = threading.Event()

def step():
    garbage = [Local()]
    garbage.append(garbage)  # a cycle holding a threading.local, freed by a collection
    time.sleep(0.0002)

@app.get("/busy")
def busy():
    while not stop.is_set():
        step()  # a new frame each call: listing the thread makes a frame object for it
    return "ok"

DiagLog(app)
threads = [threading.Thread(target=app.test_client().get, args=("/busy",)) for _ in range(4)]
for t in threads:
    t.start()
while len(inflight(app)) < 4:
    time.sleep(0.01)
gc.set_threshold(1)  # a collection at nearly every allocation
for _ in range(6000):
    assert len(inflight(app, stacks=True)) == 4
gc.set_threshold(700)
stop.set()
for t in threads:
    t.join()
print("listed", flush=True)
"""


def test_listing_stacks_survives_collections_freeing_thread_locals(tmp_path: Path) -> None:
    """Listing the threads' stacks (the watchdog's hang reports, ``inflight(stacks=True)``) while
    collections free ``threading.local`` objects never stops the process. On CPython 3.11 before
    3.11.9 (gh-106883) a collection starting inside ``sys._current_frames()`` did, for
    good (no signal handler runs either): on 3.11.7 this run stopped in 2 of 3 tries before the
    fix. Run in a child process, killed if it does not finish."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _LISTING_UNDER_COLLECTIONS, str(tmp_path / "logs")],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the process stopped while listing stacks under collections (a deadlock)")
    assert done.returncode == 0 and done.stdout == "listed\n", done.stderr


def _child_takes_stacks(app: Flask) -> int:
    """In a forked child: 0 when the collector is on and the child lists its own stacks."""
    try:
        if not gc.isenabled():
            return 3
        listed = app.test_client().get("/listed").get_json()
        return 0 if listed and "stack" in listed[0] else 4
    except BaseException:
        return 5


def test_a_child_forked_while_stacks_are_taken_gets_the_collector_back(
    make_app: Callable[..., Flask],
) -> None:
    """``thread_frames()`` turns the collector off for a moment, under a lock. A child forked
    from another thread in that moment (a server forking workers while a page lists stacks)
    starts with the collector on and the lock free: it lists its own stacks, and collects."""
    app = make_app()

    @app.get("/listed")
    def listed() -> Any:
        return inflight(stacks=True)

    stop = threading.Event()

    def take_stacks() -> None:
        while not stop.is_set():
            thread_frames()

    taker = threading.Thread(target=take_stacks)
    taker.start()
    try:
        for _ in range(200):
            pid = os.fork()
            if pid == 0:  # the child: never back into pytest
                os._exit(_child_takes_stacks(app))
            deadline = time.monotonic() + 20
            while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
                time.sleep(0.005)
            if done[0] == 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail("a forked child stopped listing its stacks (a lock left held)")
            assert os.waitstatus_to_exitcode(done[1]) == 0
    finally:
        stop.set()
        taker.join()
