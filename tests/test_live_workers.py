"""Live events across gunicorn workers: 2 real gthread workers, a real Redis message queue and a
real python-socketio client over loopback.

Several workers behind one port have no sticky sessions, so the client uses the websocket
transport only (a long-polling client would hit a worker that does not know its session).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import socketio
from servers import gunicorn

from docs import run_by

pytestmark = pytest.mark.slow

NS = "/diaglog"
TOKEN = "worker-token-0123456789"
PYTHON_CLIENT = run_by(
    "test_live_workers.py::test_the_documented_python_client_follows_a_job",
    "live.md",
    "## A Python client",
)

APP = textwrap.dedent(
    """
    import os

    from flask import Flask
    from flask_socketio import SocketIO

    from flask_diaglog import DiagLog, stage

    app = Flask(__name__)
    app.config.update(DIAGLOG_LOG_DIR=os.environ["LIVE_LOG_DIR"], DIAGLOG_FORMAT="json")
    socketio = SocketIO(
        app, async_mode="threading", message_queue=os.environ.get("OWN_MESSAGE_QUEUE") or None
    )
    diaglog = DiagLog(app, socketio=socketio)


    if os.environ.get("LOG_AT_IMPORT"):
        # with --preload this runs in the gunicorn master: its bridge starts before the fork
        app.logger.warning("app module loaded in %d", os.getpid())


    @app.post("/jobs/<job_id>")
    def start(job_id):
        def work():
            for name in ("validate", "render"):
                with stage(name):
                    app.logger.info("%s done", name)

        diaglog.spawn(work)
        return {"job_id": job_id}, 202


    @app.get("/work")
    def work():
        with stage("compute"):
            app.logger.info("working in %d", os.getpid())
        return {"pid": os.getpid()}
    """
)


@pytest.fixture(
    scope="module", params=["DIAGLOG_LIVE_QUEUE", "SocketIO(message_queue=)", "--preload"]
)
def server(
    request: pytest.FixtureRequest, redis_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """gunicorn -w 2 -k gthread serving the app; the queue set one way or the other, or the app
    loaded (and its live bridge started) in the master before the workers fork."""
    if not redis_server.ping():
        redis_server.start()
    tmp = tmp_path_factory.mktemp("live_workers")
    (tmp / "live_workers_app.py").write_text(APP)
    env = {"LIVE_LOG_DIR": str(tmp / "logs"), "DIAGLOG_LIVE_TOKEN": TOKEN}
    if request.param == "SocketIO(message_queue=)":
        env["OWN_MESSAGE_QUEUE"] = redis_server.url
    else:
        env["DIAGLOG_LIVE_QUEUE"] = redis_server.url
    if request.param == "--preload":
        env.update(GUNICORN_CMD_ARGS="--preload", LOG_AT_IMPORT="1")
    with gunicorn(
        "live_workers_app:app",
        workers=2,
        worker_class="gthread",
        threads=4,
        env=env,
        pythonpath=tmp,
        cwd=tmp,
    ) as base:
        yield base


class Listener:
    """A real Socket.IO client that records the diaglog events it receives."""

    def __init__(self) -> None:
        self.client = socketio.Client(reconnection=False)
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self.refusals: list[Any] = []
        self.client.on("event", self._on_event, namespace=NS)
        self.client.on("connect_error", self.refusals.append, namespace=NS)

    def connect(self, base: str, auth: Any) -> None:
        self.client.connect(
            base, namespaces=[NS], auth=auth, transports=["websocket"], wait_timeout=15
        )

    def _on_event(self, data: dict[str, Any]) -> None:
        with self._cond:
            self.events.append(data)
            self._cond.notify_all()

    def wait(self, done: Any, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not done(self.events):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self) -> None:
        self.client.disconnect()
        self.client.shutdown()


def get(base: str, path: str, headers: dict[str, str]) -> dict[str, Any]:
    req = urllib.request.Request(base + path, headers={**headers, "Connection": "close"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def test_a_client_on_one_worker_hears_every_worker(server: str) -> None:
    """Requests served by both workers reach one client connected to one of them."""
    listener = Listener()
    try:
        listener.connect(server, {"token": TOKEN})
        ack = listener.client.call("subscribe", {"job_id": "multi"}, namespace=NS, timeout=15)
        assert ack == {"ok": True, "rooms": ["job:multi"]}
        served: dict[str, int] = {}

        def pid_of(rid: str) -> int:
            return int(get(server, "/work", {"X-Job-ID": "multi", "X-Request-ID": rid})["pid"])

        # Which worker accepts a connection is the kernel's choice: on a loaded machine one of
        # them can win every accept of one request at a time, so requests go 4 at a time, until
        # both workers served some (bounded by time, not by a count).
        deadline = time.monotonic() + 60
        with ThreadPoolExecutor(4) as pool:
            while len(set(served.values())) < 2 or len(served) < 10:
                if time.monotonic() > deadline:
                    break
                rids = [f"multi-{len(served) + k}" for k in range(4)]
                served.update(zip(rids, pool.map(pid_of, rids), strict=True))
        pids = set(served.values())
        assert len(pids) == 2, "gunicorn never handed a request to the second worker"

        def all_ended(events: list[dict[str, Any]]) -> bool:
            ended = {e["request_id"] for e in events if e["event"] == "request_end"}
            return ended >= set(served)

        assert listener.wait(all_ended), "not every request_end arrived"
        events = list(listener.events)
        assert {e["job_id"] for e in events} == {"multi"}
        assert {e["pid"] for e in events} == pids
        for rid, pid in served.items():
            mine = [e for e in events if e["request_id"] == rid]
            # the client runs each handler on its own thread: compare without order
            kinds = sorted(e["event"] for e in mine)
            assert kinds == ["log", "request_end", "request_start", "stage"]
            assert {e["pid"] for e in mine} == {pid}
    finally:
        listener.close()


@pytest.mark.parametrize("auth", [None, {"token": "wrong"}])
def test_clients_without_the_token_are_refused(server: str, auth: Any) -> None:
    """Over the network too, no credentials or wrong ones get a refused connection."""
    listener = Listener()
    try:
        with pytest.raises(socketio.exceptions.ConnectionError, match="failed to connect"):
            listener.connect(server, auth)
        assert listener.refusals == [{"message": "unauthorized"}]
    finally:
        listener.close()


def test_the_documented_python_client_follows_a_job(server: str) -> None:
    """The docs' Python client, run as written, follows a job served by the workers."""
    (code,) = PYTHON_CLIENT
    script = code.code.replace("http://localhost:8000", server)
    script = script.replace('auth={"token": "..."}', f"auth={{'token': {TOKEN!r}}}")
    assert server in script and TOKEN in script
    proc = subprocess.Popen(
        [sys.executable, "-u", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ack = proc.stdout.readline()  # printed once subscribed
        assert "'ok': True" in ack, ack + (proc.stderr.read() if proc.stderr else "")
        req = urllib.request.Request(server + "/jobs/job-1", method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 202
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert {ln.split()[0] for ln in lines if ln.endswith(" ms ok")} <= {"validate", "render"}
    assert re.fullmatch(r"finished: validate [\d.]+ ms, render [\d.]+ ms", lines[-1]), out
