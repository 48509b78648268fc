"""Real task-queue workers for the worker tests: ``celery worker`` and ``rq worker`` processes
started in their own session and stopped (warm shutdown, then SIGKILL) by the fixtures."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from benchmarks._common import stop_process_group

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


class Worker:
    """A started worker process: its log directory, its pid, and a way to kill it hard."""

    def __init__(self, proc: subprocess.Popen[bytes], log_dir: Path, stderr: Path) -> None:
        self.proc = proc
        self.log_dir = log_dir
        self.stderr = stderr

    def kill(self) -> None:
        """SIGKILL the worker and every process it started (no shutdown code runs)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def errors(self) -> str:
        return self.stderr.read_text(errors="replace") if self.stderr.exists() else ""


def log_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a worker's log file written so far: a last line still being written
    (no newline yet) is left for the next read."""
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line]


def worker_env(env: Mapping[str, str]) -> dict[str, str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("DIAGLOG_")}
    full.update(env)
    full["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT), full.get("PYTHONPATH", "")])
    return full


@contextlib.contextmanager
def run_worker(
    cmd: list[str], env: Mapping[str, str], log_dir: Path, *, timeout: float = 30.0
) -> Iterator[Worker]:
    """Start ``cmd`` (a worker command) and wait until it says it is ready (the test apps write
    the file ``WORKERS_READY`` then); stop it after."""
    tmp = Path(tempfile.mkdtemp(prefix="diaglog-worker-"))
    ready = tmp / "ready"
    stderr = tmp / "stderr"
    full = worker_env({**env, "WORKERS_READY": str(ready), "DIAGLOG_LOG_DIR": str(log_dir)})
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            cmd, env=full, cwd=str(TESTS), stdout=err, stderr=err, start_new_session=True
        )
    worker = Worker(proc, log_dir, stderr)
    try:
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"the worker exited with {proc.returncode}:\n{worker.errors()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not get ready:\n{worker.errors()[-4000:]}")
            time.sleep(0.05)
        yield worker
    finally:
        if proc.poll() is None:
            stop_process_group(proc)


def celery_cmd(pool: str, concurrency: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "workers_celery_app:celery_app", "worker",
        "--pool", pool, "--concurrency", str(concurrency), "--loglevel", "info",
        "--without-heartbeat", "--without-gossip", "--without-mingle",
    ]  # fmt: skip


def wait_for(predicate: object, timeout: float = 15.0, interval: float = 0.05) -> None:
    """Poll ``predicate()`` until it is true (a generous bound, not a timing assertion)."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout}s: {predicate}")
        time.sleep(interval)


def live_events_of_a_slow_task(
    app_spec: str, env: Mapping[str, str], web_log_dir: Path, job_id: str
) -> list[dict[str, Any]]:
    """What a Socket.IO client of the web app (gunicorn, live events through the Redis queue),
    subscribed to ``job_id``, hears while ``POST /slow/<job_id>`` runs a task on the worker."""
    import socketio
    from servers import gunicorn

    web_env = {
        **env,
        "DIAGLOG_LOG_DIR": str(web_log_dir),
        "DIAGLOG_LIVE_QUEUE": env["DIAGLOG_JOB_STORE"],
        "DIAGLOG_LIVE_TOKEN": "t0ken-live-workers",
        "WORKERS_SOCKETIO": "1",
    }
    events: list[dict[str, Any]] = []
    with gunicorn(
        app_spec, workers=1, worker_class="gthread", threads=4, env=web_env, pythonpath=TESTS
    ) as base:
        client = socketio.Client(reconnection=False)
        client.on("event", events.append, namespace="/diaglog")
        client.connect(
            base,
            namespaces=["/diaglog"],
            auth={"token": "t0ken-live-workers"},
            transports=["websocket"],
        )
        try:
            assert client.call("subscribe", {"job_id": job_id}, namespace="/diaglog")["ok"]
            req = urllib.request.Request(f"{base}/slow/{job_id}?seconds=1.2", method="POST")
            urllib.request.urlopen(req, timeout=30).close()
            wait_for(lambda: any(e["event"] == "job_end" for e in events))
        finally:
            client.disconnect()
    return events


@contextlib.contextmanager
def celery_broker(celery_app: Any, url: str) -> Iterator[None]:
    """Point ``celery_app`` at the broker ``url`` while the block runs.

    The test modules share one Celery app object, each module with a Redis of its own: the
    connections the app keeps for sending (its broker connection pool and producer pool, made on
    first use for the broker of that moment) are closed and dropped on the way in and out, so a
    module never sends to the Redis of a module that ended before it.
    """
    before = celery_app.conf.broker_url
    _drop_broker_connections(celery_app)
    celery_app.conf.broker_url = url
    try:
        yield
    finally:
        _drop_broker_connections(celery_app)
        celery_app.conf.broker_url = before


def _drop_broker_connections(celery_app: Any) -> None:
    pool = getattr(celery_app, "_pool", None)
    if pool is not None:
        pool.force_close_all()
    celery_app._after_fork()  # what Celery does in a forked child: forget both pools
