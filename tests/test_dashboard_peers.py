"""In-flight work across workers: each process's state file, merged by whichever one answers."""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from servers import gunicorn

from flask_diaglog.peers import Peers


def _wait(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def _entry(path: str, start: float) -> dict[str, Any]:
    return {"kind": "request", "method": "GET", "path": path, "start": start, "elapsed_ms": 0.0}


def _write_state(log_dir: Path, host: str, pid: int, written: float, path: str) -> Path:
    f = log_dir / f"inflight-{host}-{pid}.json"
    state = {"host": host, "pid": pid, "written": written, "inflight": [_entry(path, written - 2)]}
    f.write_text(json.dumps(state))
    return f


def test_state_file_is_written_then_removed_at_stop(tmp_path: Path) -> None:
    """A started Peers writes this process's entries to its file, and removes it when stopped."""
    peers = Peers(str(tmp_path), lambda: [_entry("/running", time.time())], interval=0.05)
    peers.start()
    try:
        assert _wait(lambda: os.path.exists(peers.path))
        state = json.loads(Path(peers.path).read_text())
        assert state["pid"] == os.getpid() and state["inflight"][0]["path"] == "/running"
    finally:
        peers.stop()
    assert not os.path.exists(peers.path)


def test_merged_shows_other_workers_and_drops_the_dead(tmp_path: Path) -> None:
    """Live workers' entries are merged (elapsed brought up to now); dead and stale ones are not."""
    host = socket.gethostname()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now = time.time()
    try:
        _write_state(tmp_path, host, alive.pid, now, "/other-worker")
        dead_file = _write_state(tmp_path, host, dead.pid, now, "/dead-worker")
        _write_state(tmp_path, "elsewhere", 4242, now, "/other-host")
        _write_state(tmp_path, "frozen", 4343, now - 60, "/stale-host")
        (tmp_path / "inflight-garbled-1.json").write_text("{not json")
        peers = Peers(str(tmp_path), lambda: [_entry("/mine", now)])
        merged = peers.merged()
    finally:
        alive.kill()
        alive.wait()
    assert sorted(e["path"] for e in merged) == ["/mine", "/other-host", "/other-worker"]
    other = next(e for e in merged if e["path"] == "/other-worker")
    assert other["host"] == host and other["elapsed_ms"] >= 2000
    assert not dead_file.exists()


def test_publisher_stops_with_its_app(make_app: Callable[..., Flask], log_dir: Path) -> None:
    """The dashboard's publishing thread ends, and its file goes, when the app is discarded."""
    before = set(threading.enumerate())  # threads, not idents: a dead thread's ident is reused
    app = make_app({"DIAGLOG_DASHBOARD": True})
    app.test_client().get("/_diaglog/api/inflight").close()
    mine = [
        t for t in threading.enumerate() if t not in before and t.name.startswith("diaglog-peers")
    ]
    assert len(mine) == 1
    assert _wait(lambda: any(p.name.startswith("inflight-") for p in log_dir.iterdir()))
    del app
    gc.collect()
    mine[0].join(10)
    assert not mine[0].is_alive()
    assert not [p for p in log_dir.iterdir() if p.name.startswith("inflight-")]


APP = """
import os, time
from flask import Flask
from flask_diaglog import DiagLog, stage

app = Flask(__name__)
app.config.update(DIAGLOG_DASHBOARD=True, DIAGLOG_LOG_DIR=os.environ["LOGS"])
DiagLog(app)

@app.get("/slow/<job_id>")
def slow(job_id):
    with stage("waiting"):
        while not os.path.exists(os.environ["RELEASE"]):
            time.sleep(0.02)
    return "done"

@app.get("/")
def index():
    return "ok"
"""


@pytest.mark.slow
def test_dashboard_shows_every_workers_inflight_under_gunicorn(tmp_path: Path) -> None:
    """With gunicorn -w 3, the worker that answers lists the requests running in the others."""
    (tmp_path / "peers_app.py").write_text(textwrap.dedent(APP))
    release = tmp_path / "release"
    env = {"LOGS": str(tmp_path / "logs"), "RELEASE": str(release)}
    with gunicorn("peers_app:app", workers=3, env=env, pythonpath=tmp_path) as base:
        slow = [
            threading.Thread(
                target=lambda j=j: urllib.request.urlopen(f"{base}/slow/{j}", timeout=60).read()
            )
            for j in ("JOB-A", "JOB-B")
        ]
        for t in slow:
            t.start()
        seen: list[dict[str, Any]] = []

        def both_seen() -> bool:
            with urllib.request.urlopen(f"{base}/_diaglog/api/inflight", timeout=10) as r:
                seen[:] = json.load(r)["inflight"]
            return {e["path"] for e in seen} == {"/slow/JOB-A", "/slow/JOB-B"}

        try:
            assert _wait(both_seen, 30), seen
            assert len({e["pid"] for e in seen}) == 2
            assert {e["stage"] for e in seen} == {"waiting"}
        finally:
            release.touch()
            for t in slow:
                t.join(30)


def _bad_states() -> dict[str, str]:
    now = time.time()
    entry = _entry("/evil", now)
    state = {"host": "elsewhere", "pid": 2, "written": now}
    return {
        "deep": "[" * 100_000,
        "huge pid": json.dumps({**state, "pid": 10**30, "inflight": [entry]}),
        "infinite time": json.dumps({**state, "written": float("inf"), "inflight": [entry]}),
        "hung not a number": json.dumps({**state, "inflight": [{**entry, "hung": "x"}]}),
        "start not a number": json.dumps({**state, "inflight": [{**entry, "start": "x"}]}),
        "time too large for a float": json.dumps({**state, "written": 10**400, "inflight": []}),
        "start too large for a float": json.dumps(
            {**state, "inflight": [{**entry, "start": 10**400}]}
        ),
        "progress not a number": json.dumps(
            {**state, "inflight": [{**entry, "progress": {"fraction": "x"}}]}
        ),
        "not an object": "[1, 2]",
    }


@pytest.mark.parametrize("what", list(_bad_states()))
def test_a_bad_state_file_never_breaks_a_page(
    make_app: Callable[..., Flask], log_dir: Path, what: str
) -> None:
    """A state file that is not one (nested 100 000 deep, a pid or time no process has, an entry
    of the wrong shape) is ignored: every page that shows in-flight work answers."""
    app = make_app({"DIAGLOG_DASHBOARD": True})
    log_dir.mkdir(exist_ok=True)
    (log_dir / "inflight-evil-2.json").write_text(_bad_states()[what])
    client = app.test_client()
    for url in ("/_diaglog/", "/_diaglog/api/overview", "/_diaglog/api/inflight",
                "/_diaglog/api/state"):  # fmt: skip
        r = client.get(url)
        assert r.status_code == 200, url
        assert b"/evil" not in r.data


def test_bad_state_files_are_ignored_and_named(tmp_path: Path) -> None:
    """Merging skips state files that are not state files (garbled, huge, a FIFO) and names
    them in ``ignored``."""
    (tmp_path / "inflight-deep-1.json").write_text("[" * 100_000)
    (tmp_path / "inflight-huge-1.json").write_text(" " * (9 << 20))
    os.mkfifo(tmp_path / "inflight-fifo-1.json")
    peers = Peers(str(tmp_path), lambda: [_entry("/mine", time.time())])
    assert [e["path"] for e in peers.merged()] == ["/mine"]
    ignored = ["inflight-deep-1.json", "inflight-fifo-1.json", "inflight-huge-1.json"]
    assert sorted(peers.ignored) == ignored
