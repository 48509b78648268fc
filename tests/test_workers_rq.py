"""RQ: the trail and the job guard follow jobs into a real ``rq worker`` (forking a work horse
per job) over a real Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import workers_rq_app
from redis import Redis
from servers import RedisServer
from workers_servers import TESTS, run_worker, wait_for, worker_env

from flask_diaglog import guard_job
from flask_diaglog.workers.rq import Queue

pytestmark = pytest.mark.slow


def rq_cmd(worker_class: str = "workers_rq_app.ReadyWorker") -> list[str]:
    return [sys.executable, "-m", "rq.cli", "worker", "-c", "workers_rq_app", "-w", worker_class]


def jobs_of(log_dir: Path, request_id: str) -> list[dict[str, Any]]:
    path = log_dir / "jobs.log"
    lines = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return [r for r in lines if r.get("request_id") == request_id]


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def env(redis: RedisServer) -> dict[str, str]:
    base = f"redis://127.0.0.1:{redis.port}"
    return {"WORKERS_RQ_URL": f"{base}/2", "DIAGLOG_JOB_STORE": f"{base}/0"}


@pytest.fixture(scope="module")
def worker(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with run_worker(rq_cmd(), env, tmp_path_factory.mktemp("rq")) as w:
        yield w


@pytest.fixture
def web(env: dict[str, str], make_app: Any) -> Any:
    """A guarded web app of this process that enqueues on the worker's queue."""
    app = make_app({"DIAGLOG_FORMAT": "json", "DIAGLOG_JOB_STORE": env["DIAGLOG_JOB_STORE"]})
    queue = Queue(connection=Redis.from_url(env["WORKERS_RQ_URL"]))

    @app.post("/render/<job_id>")
    @guard_job
    def start(job_id: str) -> Any:
        queue.enqueue(workers_rq_app.render, 3)
        return {"job_id": job_id}, 202

    @app.post("/boom/<job_id>")
    @guard_job
    def fail(job_id: str) -> Any:
        queue.enqueue(workers_rq_app.boom)
        return {"job_id": job_id}, 202

    yield app
    app.extensions["diaglog"].guard.close()


def test_a_job_writes_its_trail_in_the_workers_jobs_log_with_the_senders_ids(
    worker: Any, web: Any
) -> None:
    """job_start, the job's log record and stage, and job_end, with the request and job ids of
    the request that enqueued it, in the worker's jobs.log."""
    job_id = f"j-{uuid.uuid4().hex[:8]}"
    resp = web.test_client().post(f"/render/{job_id}")
    rid = resp.headers["X-Request-ID"]
    wait_for(lambda: any(r["event"] == "job_end" for r in jobs_of(worker.log_dir, rid)))
    lines = jobs_of(worker.log_dir, rid)
    assert [r["event"] for r in lines] == ["job_start", "log", "stage", "job_end"]
    assert {r["job_id"] for r in lines} == {job_id}
    assert lines[-1]["ok"] is True
    assert lines[-1]["name"] == "workers_rq_app.render"


def test_the_job_stays_active_until_the_rq_job_ends(worker: Any, web: Any) -> None:
    """A duplicate is refused with 409 after the enqueuing request ended, until the job ran."""
    job_id = f"g-{uuid.uuid4().hex[:8]}"
    client = web.test_client()
    rid = client.post(f"/boom/{job_id}").headers["X-Request-ID"]
    assert client.post(f"/boom/{job_id}").status_code == 409
    wait_for(lambda: any(r["event"] == "job_end" for r in jobs_of(worker.log_dir, rid)))
    (end,) = [r for r in jobs_of(worker.log_dir, rid) if r["event"] == "job_end"]
    assert end["error"] == "ValueError: bad input"
    wait_for(lambda: client.post(f"/boom/{job_id}").status_code == 202)


def test_an_rq_worker_without_a_shared_job_store_fails_at_startup(
    env: dict[str, str], tmp_path: Path
) -> None:
    """With the memory job store ``rq worker`` exits at once, naming DIAGLOG_JOB_STORE."""
    proc = subprocess.run(
        rq_cmd("flask_diaglog.workers.rq.Worker"),
        env=worker_env({**env, "DIAGLOG_JOB_STORE": "memory", "DIAGLOG_LOG_DIR": str(tmp_path)}),
        cwd=str(TESTS),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "Set DIAGLOG_JOB_STORE" in proc.stderr
