"""The job guard against a real Redis: store contract, outage, crashed holders, gunicorn workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import WAIT, wait_until
from flask import Flask
from servers import RedisServer, gunicorn, redis_binary

from flask_diaglog import ConfigError, DiagLog, RedisJobStore, guard_job
from flask_diaglog.jobs import JobStore, JobStoreError, get_job_guard

PROBLEM = "application/problem+json"
REPO = Path(__file__).resolve().parent.parent


# -- 4. stores -----------------------------------------------------------------------------------


def test_store_lease_contract(store: JobStore) -> None:
    """Claim, busy, release and re-claim behave the same in both stores."""
    assert store.claim("c1", "t1 -", 30).outcome == "acquired"
    busy = store.claim("c1", "t2 -", 30)
    assert busy.outcome == "busy" and busy.holder == "t1 -"
    assert store.release("c1", "t2 -") is False  # not the holder: nothing freed
    assert store.holder("c1") == "t1 -"
    assert store.release("c1", "t1 -") is True
    assert store.holder("c1") is None
    assert store.claim("c1", "t3 -", 30).outcome == "acquired"
    assert store.release("c1", "t3 -", '{"r":1}', 30) is True
    done = store.claim("c1", "t4 -", 30, check_done=True)
    assert done.outcome == "done" and done.record == '{"r":1}'


def test_stale_holder_never_frees_or_renews_new_owner(store: JobStore) -> None:
    """After a lease expired and a new owner took the job, the stale holder's release and renewal
    change nothing (token check)."""
    assert store.claim("s1", "stale -", 0.2).outcome == "acquired"
    wait_until(lambda: store.holder("s1") is None, "the lease to expire")
    assert store.claim("s1", "owner -", 30).outcome == "acquired"
    assert store.release("s1", "stale -", '{"x":1}', 30) is False
    assert store.renew("s1", "stale -", 30) is False
    assert store.holder("s1") == "owner -"
    assert store.claim("s1", "x -", 30, check_done=True).outcome == "busy"  # no record stored


def test_renew_extends_and_retakes_an_expired_free_lease(store: JobStore) -> None:
    """Renewal keeps a lease alive, and re-takes it if it vanished (e.g. a Redis restart)."""
    assert store.claim("r1", "me -", 0.3).outcome == "acquired"
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # 3+ TTLs, renewed every 0.1 s
        assert store.renew("r1", "me -", 0.3) is True
        time.sleep(0.1)
    assert store.holder("r1") == "me -"
    wait_until(lambda: store.holder("r1") is None, "the lease to expire")
    assert store.renew("r1", "me -", 30) is True
    assert store.holder("r1") == "me -"


def test_redis_store_selected_by_config(
    jobs_app: Callable[..., tuple[Flask, DiagLog]], redis_url: str, tmp_path: Path
) -> None:
    """DIAGLOG_JOB_STORE=redis://... or unix://... selects RedisJobStore (also from the env)."""
    app, _ = jobs_app({"DIAGLOG_JOB_STORE": redis_url})
    store = get_job_guard(app).store
    assert isinstance(store, RedisJobStore) and store.describe() == redis_url
    sock = tmp_path / "redis.sock"
    app2, _ = jobs_app({"DIAGLOG_JOB_STORE": f"unix://{sock}?db=0"})
    assert isinstance(get_job_guard(app2).store, RedisJobStore)
    os.environ["DIAGLOG_JOB_STORE"] = "redis://:secret@127.0.0.1:1/0"  # cleaned by _clean_env
    app3, _ = jobs_app()
    assert get_job_guard(app3).store.describe() == "redis://:***@127.0.0.1:1/0"
    # a password in the query string is masked too (redis-py reads ?password=)
    os.environ["DIAGLOG_JOB_STORE"] = "redis://127.0.0.1:1/0?password=secret&db=0"
    app4, _ = jobs_app()
    assert get_job_guard(app4).store.describe() == "redis://127.0.0.1:1/0?password=***&db=0"


def test_unix_socket_redis_store_guards(
    jobs_app: Callable[..., tuple[Flask, DiagLog]], tmp_path: Path
) -> None:
    """DIAGLOG_JOB_STORE=unix://... works against a real Redis listening on a unix socket."""
    exe = redis_binary()
    assert exe is not None
    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen(
        [exe, "--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(sock.exists, "the unix socket")
        app, _ = jobs_app({"DIAGLOG_JOB_STORE": f"unix://{sock}?db=0"})
        store = get_job_guard(app).store
        assert isinstance(store, RedisJobStore)
        assert store.claim("u1", "t -", 30).outcome == "acquired"
        assert store.claim("u1", "t2 -", 30).outcome == "busy"
        assert store.release("u1", "t -") is True
    finally:
        proc.terminate()
        proc.wait(WAIT)


def test_missing_redis_package_is_a_startup_error_naming_the_key(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    """Without the redis package, a Redis job store fails at init_app, naming DIAGLOG_JOB_STORE."""
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ConfigError, match=r"DIAGLOG_JOB_STORE=.*flask-diaglog\[redis\]"):
        make_app({"DIAGLOG_JOB_STORE": redis_url})


# -- 6. store outage -----------------------------------------------------------------------------


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis server of this test alone, so stopping it disturbs nobody else."""
    server = RedisServer()
    server.start()
    yield server
    server.close()


def outage_app(
    jobs_app: Callable[..., tuple[Flask, DiagLog]], url: str, **config: Any
) -> tuple[Flask, list[str]]:
    app, _ = jobs_app({"DIAGLOG_JOB_STORE": url, "PROPAGATE_EXCEPTIONS": False, **config})
    ran: list[str] = []

    @app.post("/generate/<job_id>")
    @guard_job
    def generate(job_id: str) -> str:
        ran.append(job_id)
        return "generated"

    @app.get("/health")
    def health() -> str:
        return "fine"

    return app, ran


def bounded_post(app: Flask, path: str) -> Any:
    """POST in a thread and wait a bounded time: a hanging guard fails the test, not the run."""
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(app.test_client().post(path)))
    t.start()
    t.join(WAIT)
    assert not t.is_alive(), f"POST {path} hung"
    return result[0]


def test_outage_answers_503_logs_once_and_recovers(
    jobs_app: Callable[..., tuple[Flask, DiagLog]], own_redis: RedisServer, logs: Any
) -> None:
    """Redis down: guarded endpoints get 503 problem+json (no hang), the outage is logged once
    with its reason, unguarded endpoints still work, and service resumes when Redis is back."""
    app, ran = outage_app(jobs_app, own_redis.url)
    client = app.test_client()
    assert client.post("/generate/a").status_code == 200
    own_redis.stop()
    answers = [bounded_post(app, "/generate/b") for _ in range(3)]
    assert [r.status_code for r in answers] == [503, 503, 503]
    body = answers[0].json
    assert answers[0].mimetype == PROBLEM and body["status"] == 503 and body["job_id"] == "b"
    assert answers[0].headers["Retry-After"] == "1"
    assert client.get("/health").text == "fine"
    assert ran == ["a"]

    outage = [r for r in logs.json("errors") if "unreachable" in r["msg"]]
    assert len(outage) == 1
    assert "ConnectionError" in outage[0]["error"] and "refused" in outage[0]["error"].lower()
    assert outage[0]["level"] == "ERROR"

    own_redis.start()
    assert bounded_post(app, "/generate/c").status_code == 200
    assert ran == ["a", "c"]
    assert any("reachable again" in r["msg"] for r in logs.json("requests"))
    assert get_job_guard(app).healthy


def test_outage_with_fail_open_lets_requests_through_with_a_warning(
    jobs_app: Callable[..., tuple[Flask, DiagLog]], own_redis: RedisServer, logs: Any
) -> None:
    """DIAGLOG_JOB_FAIL_OPEN: guarded requests run during an outage, each with a WARNING line."""
    app, ran = outage_app(jobs_app, own_redis.url, DIAGLOG_JOB_FAIL_OPEN=True)
    own_redis.stop()
    assert [bounded_post(app, "/generate/x").status_code for _ in range(2)] == [200, 200]
    assert ran == ["x", "x"]
    warnings = [r for r in logs.json("requests") if "runs unguarded" in r["msg"]]
    assert len(warnings) == 2 and {w["level"] for w in warnings} == {"WARNING"}
    assert all(w["job_id"] == "x" for w in warnings)
    assert len([r for r in logs.json("errors") if "unreachable" in r["msg"]]) == 1


def test_running_job_survives_a_redis_restart(
    jobs_app: Callable[..., tuple[Flask, DiagLog]], own_redis: RedisServer
) -> None:
    """A job still running when Redis restarts (losing all keys) re-takes its lease at the next
    renewal, so duplicates are refused again."""
    app, diaglog = jobs_app({"DIAGLOG_JOB_STORE": own_redis.url, "DIAGLOG_JOB_TTL": 1.0})
    gate = threading.Event()
    threads: list[threading.Thread] = []

    @app.post("/generate/<job_id>")
    @guard_job
    def generate(job_id: str) -> tuple[str, int]:
        threads.append(diaglog.spawn(gate.wait, WAIT))
        return "", 202

    client = app.test_client()
    assert client.post("/generate/r").status_code == 202
    own_redis.restart()
    store = get_job_guard(app).store
    wait_until(lambda: store.holder("r") is not None, "the lease to be re-taken")
    assert client.post("/generate/r").status_code == 409
    gate.set()
    for t in threads:
        t.join(WAIT)
    assert client.post("/generate/r").status_code == 202
    gate.set()
    for t in threads:
        t.join(WAIT)


def test_store_errors_are_job_store_errors(own_redis: RedisServer) -> None:
    """Every Redis failure surfaces as JobStoreError (which the guard turns into 503)."""
    store = RedisJobStore(own_redis.url, timeout=0.2)
    try:
        own_redis.stop()
        for call in (
            lambda: store.claim("e", "t -", 1),
            lambda: store.renew("e", "t -", 1),
            lambda: store.release("e", "t -"),
        ):
            with pytest.raises(JobStoreError):
                call()
    finally:
        store.close()


# -- 4. crashed holder ---------------------------------------------------------------------------

HOLDER = """
import sys, time
from flask import Flask
from flask_diaglog import DiagLog, guard_job

app = Flask("holder")
app.config.update(DIAGLOG_JOB_STORE=sys.argv[1], DIAGLOG_LOG_DIR=sys.argv[2], DIAGLOG_JOB_TTL=2.0)
diaglog = DiagLog(app)

@app.post("/generate/<job_id>")
@guard_job
def generate(job_id):
    diaglog.spawn(time.sleep, 3600)
    return "", 202

print(app.test_client().post("/generate/crash").status_code, flush=True)
time.sleep(3600)
"""


def test_sigkilled_holder_frees_the_job_after_its_ttl(
    jobs_app: Callable[..., tuple[Flask, DiagLog]], redis_url: str, tmp_path: Path
) -> None:
    """A process holding a job is SIGKILLed (no release runs): the id is free after the TTL."""
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    proc = subprocess.Popen(
        [sys.executable, str(script), redis_url, str(tmp_path / "holder-logs")],
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"202"
        app, _ = jobs_app({"DIAGLOG_JOB_STORE": redis_url})

        @app.post("/generate/<job_id>")
        @guard_job
        def generate(job_id: str) -> str:
            return "mine now"

        client = app.test_client()
        assert client.post("/generate/crash").status_code == 409
        proc.send_signal(signal.SIGKILL)
        proc.wait(WAIT)
        wait_until(lambda: client.post("/generate/crash").status_code == 200, "the TTL to free it")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
        if proc.stdout is not None:
            proc.stdout.close()


# -- 3. many processes ---------------------------------------------------------------------------

GUNICORN_APP = """
import os, time
from pathlib import Path
from flask import Flask
from flask_diaglog import DiagLog, guard_job

app = Flask("gunicorn_jobs")
diaglog = DiagLog(app)
GO = Path(os.environ["JOBS_GO_FILE"])


def work():
    deadline = time.monotonic() + 60
    while not GO.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


@app.get("/")
def index():
    return "up"


@app.post("/generate/<job_id>")
@guard_job
def generate(job_id):
    diaglog.spawn(work)
    return {"job_id": job_id}, 202


@app.after_request
def pid_header(response):
    response.headers["X-PID"] = str(os.getpid())
    return response
"""


def post(url: str) -> tuple[int, str]:
    req = urllib.request.Request(url, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=WAIT) as resp:
            return resp.status, resp.headers["X-PID"]
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.headers["X-PID"]


@pytest.mark.slow
def test_gunicorn_4_workers_exactly_one_accepted(redis_url: str, tmp_path: Path) -> None:
    """200 concurrent requests for one id over 4 gunicorn worker processes sharing Redis:
    exactly 1 accepted, 199 refused with 409; the id is free again once the work ended."""
    (tmp_path / "jobsapp.py").write_text(textwrap.dedent(GUNICORN_APP))
    go = tmp_path / "go"
    log_dir = tmp_path / "logs"
    env = {
        "DIAGLOG_JOB_STORE": redis_url,
        "DIAGLOG_LOG_DIR": str(log_dir),
        "DIAGLOG_FORMAT": "json",
        "JOBS_GO_FILE": str(go),
    }
    with gunicorn("jobsapp:app", workers=4, env=env, pythonpath=tmp_path) as base:
        with ThreadPoolExecutor(max_workers=32) as pool:
            results = list(pool.map(lambda _: post(base + "/generate/gpu-1"), range(200)))
        statuses = [s for s, _ in results]
        pids = {p for _, p in results}
        # Each line is on disk before its response is sent, so all 199 are there now.
        lines = [json.loads(x) for x in (log_dir / "requests.log").read_text().splitlines() if x]
        go.touch()  # lets the one running job finish
        wait_until(lambda: post(base + "/generate/gpu-1")[0] == 202, "the job to be free again")
    assert statuses.count(202) == 1
    assert statuses.count(409) == 199
    assert len(pids) >= 2, "requests were served by more than one worker process"
    rejected = [r for r in lines if r["event"] == "job_rejected"]
    assert len(rejected) == 199
    assert {r["job_id"] for r in rejected} == {"gpu-1"}
    assert len({r["pid"] for r in rejected}) >= 2
