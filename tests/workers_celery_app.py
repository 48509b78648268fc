"""A Flask app and a Celery app for the worker tests: imported by the test process (the web side)
and by real ``celery worker`` processes (``-A workers_celery_app``), configured by environment
variables (``DIAGLOG_*``, ``WORKERS_BROKER``)."""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from celery import Celery, signals
from flask import Flask, request

from flask_diaglog import DiagLog, current_job_id, guard_job, progress, stage
from flask_diaglog.workers import init_celery

celery_app = Celery(__name__, broker=os.environ.get("WORKERS_BROKER", "memory://"))
celery_app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=1,
    task_acks_late=False,
    # A pool process killed from outside fails its task (WorkerLostError) this long after it
    # exited (Celery's default is 10 s): the tests need not wait that long.
    worker_lost_wait=1.0,
)


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """The web app: guarded views that send tasks (the environment overrides ``config``)."""
    web = Flask(__name__)
    if os.environ.get("WORKERS_SOCKETIO"):  # a web side with live events (gunicorn in tests)
        from flask_socketio import SocketIO

        SocketIO(web, async_mode="threading", message_queue=os.environ["DIAGLOG_LIVE_QUEUE"])
    web.config.update(
        {"DIAGLOG_FORMAT": "json", "DIAGLOG_LOG_DIR": tempfile.mkdtemp(), **(config or {})}
    )
    DiagLog(web)

    @web.post("/render/<job_id>")
    @guard_job
    def start_render(job_id: str) -> Any:
        with stage("enqueue"):
            render.delay(3)
        return {"job_id": job_id}, 202

    @web.post("/slow/<job_id>")
    @guard_job(replay=True)
    def start_slow(job_id: str) -> Any:
        slow.delay(float(request.args.get("seconds", "1")))
        return {"job_id": job_id}, 202

    @web.post("/boom/<job_id>")
    @guard_job
    def start_boom(job_id: str) -> Any:
        boom.delay()
        return {"job_id": job_id}, 202

    @web.post("/too_slow/<job_id>")
    @guard_job
    def start_too_slow(job_id: str) -> Any:
        too_slow.delay()
        return {"job_id": job_id}, 202

    return web


#: The app a worker (and gunicorn) uses; configured by the DIAGLOG_* environment variables.
app = create_app()
init_celery(celery_app, app)

log = logging.getLogger(__name__)


def _mark(name: str) -> None:
    """Leave a file behind in WORKERS_MARKS: the tests count task runs by them."""
    marks = os.environ.get("WORKERS_MARKS")
    if marks:
        path = Path(marks) / f"{name}-{os.getpid()}-{time.monotonic_ns()}"
        path.write_text(current_job_id() or "-")


@celery_app.task
def render(n: int) -> int:
    with stage("render"):
        log.info("rendering %d", n)
        progress(1.0)
    _mark("render")
    return n * 2


@celery_app.task
def boom() -> None:
    log.info("about to fail")
    raise ValueError("bad input")


@celery_app.task(bind=True, max_retries=2)
def flaky(self: Any) -> str:
    if self.request.retries < 2:
        raise self.retry(exc=ValueError("not yet"), countdown=0)
    return "ok"


@celery_app.task(bind=True, autoretry_for=(ValueError,), max_retries=1, default_retry_delay=0)
def auto_flaky(self: Any) -> str:
    """Fails its first attempt (``autoretry_for``), then succeeds."""
    if self.request.retries < 1:
        raise ValueError("boom")
    return "ok"


@celery_app.task
def slow(seconds: float) -> None:
    _mark("slow")
    with stage("wait"):
        time.sleep(seconds)


@celery_app.task(time_limit=1)
def too_slow() -> None:
    _mark("too_slow")
    time.sleep(30)


@celery_app.task
def gated(gate: str) -> None:
    """Leaves ``started-<gate>`` (with its job id) in WORKERS_MARKS, then waits until the test
    makes ``open-<gate>`` there (at most a minute)."""
    marks = Path(os.environ["WORKERS_MARKS"])
    (marks / f"started-{gate}").write_text(current_job_id() or "-")
    deadline = time.monotonic() + 60
    while not (marks / f"open-{gate}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _wait_for_file(path: Path) -> None:
    deadline = time.monotonic() + 60
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


@celery_app.task
def stubborn(gate: str) -> None:
    """Leaves ``pid-<gate>`` (its process id) in WORKERS_MARKS and waits until the test makes
    ``open-<gate>``; then, or when it is terminated meanwhile (SIGTERM raises SystemExit), its
    cleanup waits until the test makes ``cleanup-<gate>`` (at most a minute each)."""
    marks = Path(os.environ["WORKERS_MARKS"])
    try:  # terminated as soon as the test sees the pid: in the try already
        (marks / f"pid-{gate}").write_text(str(os.getpid()))
        _wait_for_file(marks / f"open-{gate}")
    finally:
        _wait_for_file(marks / f"cleanup-{gate}")


@celery_app.task
def parent(queue: str) -> None:
    """Sends a child task to ``queue`` from inside its run."""
    render.apply_async((1,), queue=queue)


def _dies_once(gate: str) -> None:
    """The first run of ``gate`` leaves ``died-<gate>`` (its job id) in WORKERS_MARKS and kills
    its own pool process with SIGKILL, as the OOM killer would; a later run leaves
    ``ran-<gate>`` (its job id) and returns once the test makes ``open-<gate>`` there (at most a
    minute)."""
    marks = Path(os.environ["WORKERS_MARKS"])
    died = marks / f"died-{gate}"
    if not died.exists():
        died.write_text(current_job_id() or "-")
        os.kill(os.getpid(), signal.SIGKILL)
    (marks / f"ran-{gate}").write_text(current_job_id() or "-")
    _wait_for_file(marks / f"open-{gate}")


@celery_app.task
def lost(gate: str) -> None:
    """Its pool process dies on its first run; Celery then fails it (``WorkerLostError``)."""
    _dies_once(gate)


@celery_app.task(acks_late=True, reject_on_worker_lost=True)
def redelivered(gate: str) -> None:
    """Put back in its queue when its pool process dies (``reject_on_worker_lost``)."""
    _dies_once(gate)


@celery_app.task(acks_late=True, retry_on_worker_lost=True, max_retries=2, default_retry_delay=0)
def resent(gate: str) -> None:
    """Sent again by the worker's main process when its pool process dies
    (``retry_on_worker_lost``)."""
    _dies_once(gate)


@signals.worker_ready.connect
def _ready(**_: Any) -> None:
    """Tell the test fixture this worker consumes now."""
    ready = os.environ.get("WORKERS_READY")
    if ready:
        Path(ready).write_text(str(os.getpid()))
