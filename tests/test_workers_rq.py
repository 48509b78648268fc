"""RQ: the trail, the job guard and the live stream follow jobs into a real ``rq worker``
(forking a work horse per job) over a real Redis: retries with their attempt, time limits,
stopped and cancelled jobs, live events and hang reports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import workers_rq_app
from flask import request
from redis import Redis
from rq import Retry
from rq.command import send_stop_job_command
from servers import RedisServer, module_redis  # noqa: F401  (the redis fixture)
from workers_servers import (
    TESTS,
    live_events_of_a_slow_task,
    log_lines,
    run_worker,
    wait_for,
    worker_env,
)

from flask_diaglog import guard_job
from flask_diaglog.workers.rq import ATTEMPTS, Queue, init_rq

pytestmark = pytest.mark.slow


def rq_cmd(worker_class: str = "workers_rq_app.ReadyWorker") -> list[str]:
    return [
        sys.executable, "-m", "rq.cli", "worker", "-c", "workers_rq_app", "-w", worker_class,
        "--with-scheduler",
    ]  # fmt: skip


def jobs_of(log_dir: Path, request_id: str) -> list[dict[str, Any]]:
    path = log_dir / "jobs.log"
    return [r for r in log_lines(path) if r.get("request_id") == request_id]


@pytest.fixture(scope="module")
def env(redis: RedisServer) -> dict[str, str]:
    base = f"redis://127.0.0.1:{redis.port}"
    return {"WORKERS_RQ_URL": f"{base}/2", "DIAGLOG_JOB_STORE": f"{base}/0"}


@pytest.fixture(scope="module")
def worker(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real ``rq worker`` (with its scheduler, for retry intervals), reporting hangs after
    0.7 s and sending live events through the Redis message queue."""
    live = {"DIAGLOG_HANG_AFTER": "0.7", "DIAGLOG_LIVE_QUEUE": env["DIAGLOG_JOB_STORE"]}
    with run_worker(rq_cmd(), {**env, **live}, tmp_path_factory.mktemp("rq")) as w:
        yield w


@pytest.fixture
def web(env: dict[str, str], make_app: Any) -> Any:
    """A guarded web app of this process that enqueues on the worker's queue (the RQ app of
    this process while the test runs)."""
    app = make_app({"DIAGLOG_FORMAT": "json", "DIAGLOG_JOB_STORE": env["DIAGLOG_JOB_STORE"]})
    conn = Redis.from_url(env["WORKERS_RQ_URL"])
    queue = Queue(connection=conn)
    app.rq = conn
    app.sent = sent = []

    @app.post("/flaky/<job_id>")
    @guard_job
    def start_flaky(job_id: str) -> Any:
        interval = int(request.args.get("interval", "0"))
        seconds = float(request.args.get("seconds", "0"))
        sent.append(
            queue.enqueue(workers_rq_app.flaky, seconds, retry=Retry(max=2, interval=interval))
        )
        return {"job_id": job_id}, 202

    @app.post("/slow/<job_id>")
    @guard_job
    def start_slow(job_id: str) -> Any:
        on = Queue(request.args.get("queue", "default"), connection=conn)
        timeout = request.args.get("timeout")
        seconds = float(request.args.get("seconds", "30"))
        sent.append(on.enqueue(workers_rq_app.slow, seconds, job_timeout=timeout and int(timeout)))
        return {"job_id": job_id}, 202

    @app.post("/render/<job_id>")
    @guard_job
    def start(job_id: str) -> Any:
        queue.enqueue(workers_rq_app.render, 3)
        return {"job_id": job_id}, 202

    @app.post("/boom/<job_id>")
    @guard_job
    def fail(job_id: str) -> Any:
        sent.append(queue.enqueue(workers_rq_app.boom))
        return {"job_id": job_id}, 202

    @app.post("/parent/<job_id>")
    @guard_job
    def start_parent(job_id: str) -> Any:
        sent.append(queue.enqueue(workers_rq_app.parent, request.args["queue"]))
        return {"job_id": job_id}, 202

    init_rq(app)
    try:
        yield app
    finally:
        init_rq(workers_rq_app.app)
        app.extensions["diaglog"].guard.close()
        conn.close()  # its sockets now, not when a garbage cycle is collected


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


def test_rqs_own_line_about_a_failed_job_carries_the_senders_ids(worker: Any, web: Any) -> None:
    """RQ logs a failed job with ``extra={"job_id": <its own job id>}``: the line still carries
    the diaglog job id and request id of the request that enqueued it, not RQ's id."""
    job_id = f"e-{uuid.uuid4().hex[:8]}"
    rid = web.test_client().post(f"/boom/{job_id}").headers["X-Request-ID"]
    rq_id = web.sent[-1].id

    def rq_line() -> dict[str, Any] | None:
        path = worker.log_dir / "errors.log"
        found = [r for r in log_lines(path) if r["logger"] == "rq.worker" and rq_id in r["msg"]]
        return found[0] if found else None

    wait_for(lambda: rq_line() is not None)
    line = rq_line()
    assert line is not None and "exception raised while executing" in line["msg"]
    assert line["job_id"] == job_id and line["request_id"] == rid


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


def test_a_malformed_attempts_meta_runs_the_job_after_a_warning_naming_it(
    worker: Any, web: Any
) -> None:
    """``diaglog_attempts`` in a job's meta that is not a whole number of runs from 1 (a
    boolean, 0, negative, text, a float, thousands of digits): the job runs normally as its
    first attempt, without ``attempts``, after a WARNING line that names the key."""
    values: list[Any] = [True, 0, -1, "3", 2.5, 10**400]
    sent: list[Any] = []

    @web.post("/bad-attempts")
    def send() -> Any:
        queue = Queue(connection=web.rq)
        sent.extend(queue.enqueue(workers_rq_app.render, 1, meta={ATTEMPTS: v}) for v in values)
        return "", 202

    rid = web.test_client().post("/bad-attempts").headers["X-Request-ID"]
    wait_for(lambda: len(job_lines(worker.log_dir, rid, "job_end")) == len(values))
    lines = jobs_of(worker.log_dir, rid)
    for job, value in zip(sent, values, strict=True):
        mine = [r for r in lines if r.get("task_id") == job.id]
        (warning,) = [r["msg"] for r in mine if r["level"] == "WARNING"]
        assert f"header {ATTEMPTS}=" in warning, value
        assert "is not a number of runs" in warning
        (start,) = [r for r in mine if r["event"] == "job_start"]
        assert (start["attempt"], "attempts" in start) == (1, False)
        assert [r["ok"] for r in mine if r["event"] == "job_end"] == [True]


def job_lines(log_dir: Path, rid: str, event: str) -> list[dict[str, Any]]:
    return [r for r in jobs_of(log_dir, rid) if r["event"] == event]


def test_retries_are_visible_with_their_attempt_number(worker: Any, web: Any) -> None:
    """Retry(max=2): three runs, each job_start and job_end with its attempt of 3 (the message
    says attempt=N from the second), and a WARNING naming the next attempt before each retry."""
    rid = web.test_client().post(f"/flaky/a-{uuid.uuid4().hex[:8]}").headers["X-Request-ID"]
    wait_for(lambda: len(job_lines(worker.log_dir, rid, "job_end")) == 3)
    starts = job_lines(worker.log_dir, rid, "job_start")
    assert [(r["attempt"], r["attempts"], r["queue"]) for r in starts] == [
        (1, 3, "default"),
        (2, 3, "default"),
        (3, 3, "default"),
    ]
    assert starts[1]["msg"] == "job_start workers_rq_app.flaky attempt=2"
    ends = job_lines(worker.log_dir, rid, "job_end")
    assert [(r["attempt"], r["ok"]) for r in ends] == [(1, False), (2, False), (3, True)]
    assert {r["task_id"] for r in starts + ends} == {web.sent[0].id}
    notes = [r["msg"] for r in job_lines(worker.log_dir, rid, "log") if r["level"] == "WARNING"]
    assert [n.split(") ", 1)[1] for n in notes] == [
        "will be retried in 0s as attempt 2 of 3: ValueError: not yet",
        "will be retried in 0s as attempt 3 of 3: ValueError: not yet",
    ]


def test_a_failed_attempt_that_rq_retries_keeps_the_job(worker: Any, web: Any) -> None:
    """Between a failed attempt and its retry (3 s later) the job stays active: a duplicate
    gets 409. The last attempt's end frees it."""
    job_id = f"k-{uuid.uuid4().hex[:8]}"
    client = web.test_client()
    rid = client.post(f"/flaky/{job_id}?interval=3").headers["X-Request-ID"]
    wait_for(lambda: job_lines(worker.log_dir, rid, "job_end"))
    time.sleep(0.5)  # the failed attempt's work horse has ended (and, before, freed the job)
    assert len(job_lines(worker.log_dir, rid, "job_start")) == 1  # still between attempts
    assert client.post(f"/flaky/{job_id}").status_code == 409
    wait_for(lambda: len(job_lines(worker.log_dir, rid, "job_end")) == 3, timeout=30)
    wait_for(lambda: client.post(f"/flaky/{job_id}").status_code == 202)


def test_a_job_stopped_by_its_job_timeout_ends_with_a_line_and_frees_the_job(
    worker: Any, web: Any
) -> None:
    """job_timeout=1 on a 30 s job: its job_end says JobTimeoutException (in errors.log too),
    and the job is free again."""
    job_id = f"t-{uuid.uuid4().hex[:8]}"
    client = web.test_client()
    rid = client.post(f"/slow/{job_id}?timeout=1").headers["X-Request-ID"]
    wait_for(lambda: job_lines(worker.log_dir, rid, "job_end"))
    (end,) = job_lines(worker.log_dir, rid, "job_end")
    assert end["ok"] is False
    assert end["error"].startswith("JobTimeoutException: ")
    errors = (worker.log_dir / "errors.log").read_text()
    assert f'"request_id":"{rid}"' in errors.replace(" ", "")
    wait_for(lambda: client.post(f"/slow/{job_id}?seconds=0").status_code == 202)


def test_a_stopped_job_ends_with_a_line_and_frees_the_job(worker: Any, web: Any) -> None:
    """send_stop_job_command kills the work horse: the worker writes the job's last line
    (outcome stopped) with the sender's ids, and frees the job."""
    job_id = f"s-{uuid.uuid4().hex[:8]}"
    client = web.test_client()
    rid = client.post(f"/slow/{job_id}").headers["X-Request-ID"]
    wait_for(lambda: job_lines(worker.log_dir, rid, "job_start"))
    send_stop_job_command(web.rq, web.sent[-1].id)

    def stopped() -> list[dict[str, Any]]:
        return [r for r in jobs_of(worker.log_dir, rid) if r.get("outcome") == "stopped"]

    wait_for(stopped)
    (line,) = stopped()
    assert line["job_id"] == job_id and line["task_id"] == web.sent[-1].id
    assert "was stopped" in line["msg"]
    assert not job_lines(worker.log_dir, rid, "job_end")
    wait_for(lambda: client.post(f"/slow/{job_id}?seconds=0").status_code == 202)


def test_a_killed_work_horse_with_retries_left_ends_with_one_line(
    worker: Any, web: Any, tmp_path: Path
) -> None:
    """SIGKILL to the work horse of a job that RQ retries: the worker writes one line (outcome
    killed) with RQ's reason and the attempt that follows, and the retry runs."""
    pid_file = tmp_path / "horse.pid"
    queue = Queue(connection=web.rq)
    sent: list[Any] = []

    @guard_job
    def view() -> Any:
        sent.append(queue.enqueue(workers_rq_app.pid_then_wait, str(pid_file), retry=Retry(1)))
        return "", 202

    web.add_url_rule("/horse", "horse", view, methods=["POST"])
    job = {"X-Job-ID": f"h-{uuid.uuid4().hex[:8]}"}
    rid = web.test_client().post("/horse", headers=job).headers["X-Request-ID"]
    wait_for(pid_file.exists)
    os.kill(int(pid_file.read_text()), signal.SIGKILL)

    def killed() -> list[dict[str, Any]]:
        return [r for r in jobs_of(worker.log_dir, rid) if r.get("outcome") == "killed"]

    wait_for(killed)
    (line,) = killed()
    assert line["msg"] == (
        f"task workers_rq_app.pid_then_wait ({sent[0].id}) ended outside its run: Work-horse "
        "terminated unexpectedly; waitpid returned 9 (signal 9); RQ retries it as attempt 2 of 2"
    )
    assert (line["level"], line["job_id"]) == ("ERROR", job["X-Job-ID"])
    wait_for(lambda: job_lines(worker.log_dir, rid, "job_end"))
    (end,) = job_lines(worker.log_dir, rid, "job_end")
    assert (end["attempt"], end["ok"]) == (2, True)


def test_a_job_cancelled_before_it_ran_ends_with_a_line_and_frees_the_job(web: Any) -> None:
    """Job.cancel() on a queued job writes its last line (outcome cancelled) in the cancelling
    process's jobs.log, with the sender's ids, and gives the job up at once."""
    job_id = f"c-{uuid.uuid4().hex[:8]}"
    client = web.test_client()
    path = f"/slow/{job_id}?queue=nobody-{uuid.uuid4().hex[:6]}"
    rid = client.post(path).headers["X-Request-ID"]
    assert client.post(path).status_code == 409
    Queue(web.sent[0].origin, connection=web.rq).fetch_job(web.sent[0].id).cancel()
    (line,) = [
        r
        for r in jobs_of(Path(web.config["DIAGLOG_LOG_DIR"]), rid)
        if r.get("outcome") == "cancelled"
    ]
    assert line["job_id"] == job_id and "cancelled before it ran" in line["msg"]
    assert client.post(path).status_code == 202


def test_worker_events_and_hang_reports_reach_live_clients_through_redis(
    worker: Any, env: dict[str, str], tmp_path: Path
) -> None:
    """A Socket.IO client of the web app (gunicorn), subscribed to a job, hears the RQ job's
    job_start, hang report (with its stage), stage and job_end from the work horse; the hang
    report with the stack is in the worker's jobs.log."""
    job_id = f"l-{uuid.uuid4().hex[:8]}"
    events = live_events_of_a_slow_task("workers_rq_app:app", env, tmp_path / "web", job_id)
    from_worker = [e for e in events if e["event"] in ("job_start", "stage", "hang", "job_end")]
    assert [e["event"] for e in from_worker] == ["job_start", "hang", "stage", "job_end"]
    assert {e["pid"] for e in from_worker}.isdisjoint(
        {e["pid"] for e in events if e["event"] == "request_end"}
    )
    assert from_worker[1]["stage"] == "wait"
    (line,) = [
        r for r in jobs_of(worker.log_dir, from_worker[0]["request_id"]) if r["event"] == "hang"
    ]
    assert "time.sleep(seconds)" in line["exc"]


def test_a_job_enqueued_by_a_job_holds_the_job_while_it_waits_in_its_queue(
    worker: Any, web: Any
) -> None:
    """A job enqueues a child job (on a queue no worker takes yet) and ends: the job stays
    active for the child, which has yet to run."""
    job_id = f"p-{uuid.uuid4().hex[:8]}"
    client = web.test_client()
    path = f"/parent/{job_id}?queue=nobody-{uuid.uuid4().hex[:6]}"
    assert client.post(path).status_code == 202
    parent = web.sent[-1]
    wait_for(lambda: parent.get_status(refresh=True) == "finished")
    assert client.post(path).status_code == 409


def test_a_retried_attempt_ends_with_a_warning_not_a_failed_job(worker: Any, web: Any) -> None:
    """An attempt RQ runs again ends with a WARNING ``job_end ... retried`` carrying its
    exception (``retried: true``); only the last attempt's end says ok or failed."""
    rid = web.test_client().post(f"/flaky/w-{uuid.uuid4().hex[:8]}").headers["X-Request-ID"]
    wait_for(lambda: len(job_lines(worker.log_dir, rid, "job_end")) == 3)
    ends = job_lines(worker.log_dir, rid, "job_end")
    assert [(r["level"], r.get("retried")) for r in ends] == [
        ("WARNING", True),
        ("WARNING", True),
        ("INFO", None),
    ]
    assert ends[0]["error"] == "ValueError: not yet"
    assert " retried " in ends[0]["msg"]
