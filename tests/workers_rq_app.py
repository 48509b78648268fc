"""The RQ side of the worker tests: a Flask app registered with ``init_rq``, imported by the
test process, by gunicorn (the web side, with Flask-SocketIO when ``WORKERS_SOCKETIO`` is set)
and by real ``rq worker -c workers_rq_app`` processes (configured by environment variables:
``DIAGLOG_*``, ``WORKERS_RQ_URL``)."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from flask import Flask, request
from redis import Redis
from rq import get_current_job

from flask_diaglog import DiagLog, guard_job, stage
from flask_diaglog.workers.rq import Queue, Worker, init_rq

#: Read by ``rq worker -c workers_rq_app``.
REDIS_URL = os.environ.get("WORKERS_RQ_URL", "redis://127.0.0.1:6379/2")

app = Flask(__name__)
if os.environ.get("WORKERS_SOCKETIO"):  # a web side with live events (gunicorn in tests)
    from flask_socketio import SocketIO

    SocketIO(app, async_mode="threading", message_queue=os.environ["DIAGLOG_LIVE_QUEUE"])
app.config.update({"DIAGLOG_FORMAT": "json", "DIAGLOG_LOG_DIR": tempfile.mkdtemp()})
DiagLog(app)
init_rq(app)

log = logging.getLogger(__name__)


def render(n: int) -> int:
    with stage("render"):
        log.info("rendering %d", n)
    return n * 2


def boom() -> None:
    raise ValueError("bad input")


def flaky(seconds: float = 0.0) -> str:
    """Fails while RQ has retries left for it, then succeeds."""
    time.sleep(seconds)
    job = get_current_job()
    if job is not None and job.retries_left:
        raise ValueError("not yet")
    return "ok"


def slow(seconds: float) -> None:
    with stage("wait"):
        time.sleep(seconds)


def pid_then_wait(pid_file: str) -> str:
    """Writes the id of its process (the work horse) to ``pid_file``; while RQ has retries left
    for it, then waits to be killed (at most a minute)."""
    Path(f"{pid_file}.tmp").write_text(str(os.getpid()))
    os.replace(f"{pid_file}.tmp", pid_file)
    job = get_current_job()
    if job is not None and job.retries_left:
        time.sleep(60)
    return "ok"


def parent(queue: str) -> None:
    """Enqueues a child job on ``queue`` from inside its run."""
    job = get_current_job()
    assert job is not None
    Queue(queue, connection=job.connection).enqueue(render, 1)


@app.post("/slow/<job_id>")
@guard_job(replay=True)
def start_slow(job_id: str) -> Any:
    with Redis.from_url(REDIS_URL) as conn:  # closed now, not when the garbage is collected
        Queue(connection=conn).enqueue(slow, float(request.args.get("seconds", "1")))
    return {"job_id": job_id}, 202


class ReadyWorker(Worker):
    """Tells the test fixture it is about to take jobs."""

    def work(self, *args: Any, **kwargs: Any) -> bool:
        ready = os.environ.get("WORKERS_READY")
        if ready:
            Path(ready).write_text(str(os.getpid()))
        return super().work(*args, **kwargs)
