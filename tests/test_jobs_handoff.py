"""Issue 12 item 3 groundwork: a guarded view hands its job to a task; the worker adopts the
lease, renews it while the task runs and frees it when the task ends (or after the TTL when the
worker dies). Real Redis; the view and the worker are two threads (or a killed process)."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import WAIT, Logs, wait_until
from flask import Flask

from flask_diaglog import DiagLog, guard_job
from flask_diaglog.jobs import HandOffError, JobStore, abandon, adopt, get_job_guard, hand_off

REPO = Path(__file__).resolve().parent.parent
Factory = Callable[..., tuple[Flask, DiagLog]]


class Web:
    """A web app whose guarded view hands its job to a "task": the token goes into a queue."""

    def __init__(self, jobs_app: Factory, config: dict[str, Any], **guard: Any) -> None:
        self.app, _ = jobs_app(config)
        self.tokens: queue.Queue[dict[str, str] | None] = queue.Queue()
        self.runs = 0
        self.hand_off_ttl: float | None = None

        @self.app.post("/render/<job_id>")
        @guard_job(**guard)
        def render(job_id: str) -> tuple[dict[str, Any], int]:
            self.runs += 1
            token = hand_off(ttl=self.hand_off_ttl)
            self.tokens.put(json.loads(json.dumps(token)))  # as through a broker
            return {"job_id": job_id, "run": self.runs}, 202

        self.client = self.app.test_client()

    def post(self, job_id: str, **kw: Any) -> Any:
        return self.client.post(f"/render/{job_id}", **kw)

    def token(self) -> dict[str, str]:
        token = self.tokens.get(timeout=WAIT)
        assert token is not None
        return token


class Worker(threading.Thread):
    """Adopts a token in its own app (the worker host's config) and runs until ``done`` is set."""

    def __init__(self, app: Flask, token: dict[str, str], fail: bool = False) -> None:
        super().__init__(name="fake-task-worker")
        self.app, self.token, self.fail = app, token, fail
        self.adopted = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with adopt(self.token, self.app):
                self.adopted.set()
                assert self.done.wait(WAIT)
                if self.fail:
                    raise RuntimeError("task failed")
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self.done.set()
        self.join(WAIT)
        assert not self.is_alive()


@pytest.fixture
def worker_app(jobs_app: Factory, redis_url: str, tmp_path: Path) -> Flask:
    """The worker side: its own app and log directory, the same Redis."""
    app, _ = jobs_app({"DIAGLOG_JOB_STORE": redis_url, "DIAGLOG_LOG_DIR": str(tmp_path / "w")})
    return app


@pytest.fixture
def web(jobs_app: Factory, redis_url: str) -> Web:
    return Web(jobs_app, {"DIAGLOG_JOB_STORE": redis_url})


def test_handed_off_job_is_active_until_the_worker_releases_it(web: Web, worker_app: Flask) -> None:
    """After the view returned, a duplicate gets 409 while the task runs on the worker; once
    the worker's task ends, a new request is accepted."""
    assert web.post("j1").status_code == 202
    worker = Worker(worker_app, web.token())
    worker.start()
    assert worker.adopted.wait(WAIT)
    dup = web.post("j1")
    assert dup.status_code == 409 and dup.json is not None and dup.json["job_id"] == "j1"
    worker.finish()
    assert worker.error is None
    assert web.post("j1").status_code == 202
    assert web.runs == 2


def test_job_is_held_between_the_request_end_and_the_adoption(web: Web) -> None:
    """A task still waiting in its queue (nobody adopted the token yet) keeps the job: 409."""
    assert web.post("queued").status_code == 202
    assert web.post("queued").status_code == 409


def test_worker_renews_the_lease_for_many_ttls(
    jobs_app: Factory, redis_url: str, tmp_path: Path
) -> None:
    """A task running for several TTLs keeps the job: the worker's renewer extends the lease."""
    config = {"DIAGLOG_JOB_STORE": redis_url, "DIAGLOG_JOB_TTL": 0.6}
    web = Web(jobs_app, config)
    worker_app, _ = jobs_app({**config, "DIAGLOG_LOG_DIR": str(tmp_path / "w")})
    assert web.post("long").status_code == 202
    worker = Worker(worker_app, web.token())
    worker.start()
    assert worker.adopted.wait(WAIT)
    store = get_job_guard(web.app).store
    value = worker.token["lease"]
    deadline = time.monotonic() + 4 * 0.6
    while time.monotonic() < deadline:  # four TTLs: only renewals keep it held
        assert store.holder("long") == value
        time.sleep(0.05)
    assert web.post("long").status_code == 409
    worker.finish()
    assert web.post("long").status_code == 202


def test_adopted_job_outlives_a_short_hand_off_ttl(
    jobs_app: Factory, redis_url: str, worker_app: Flask
) -> None:
    """The hand-off TTL only bounds the wait for a worker: a task adopted before the request
    ended keeps the job for as long as it runs, however short that TTL."""
    app, _ = jobs_app({"DIAGLOG_JOB_STORE": redis_url})
    workers: list[Worker] = []

    @app.post("/adopted/<job_id>")
    @guard_job
    def adopted(job_id: str) -> tuple[str, int]:
        token = hand_off(ttl=0.2)
        assert token is not None
        workers.append(Worker(worker_app, token))
        workers[0].start()
        assert workers[0].adopted.wait(WAIT)
        return "", 202

    client = app.test_client()
    assert client.post("/adopted/a").status_code == 202
    store = get_job_guard(app).store
    value = workers[0].token["lease"]
    deadline = time.monotonic() + 1.0  # five hand-off TTLs
    while time.monotonic() < deadline:
        assert store.holder("a") == value
        time.sleep(0.05)
    workers[0].finish()
    assert store.holder("a") is None


def test_worker_finishing_before_the_request_ends_keeps_the_job_until_then(
    jobs_app: Factory, redis_url: str, worker_app: Flask
) -> None:
    """The job is free only when both the request and the task have ended, in either order."""
    app, _ = jobs_app({"DIAGLOG_JOB_STORE": redis_url})
    seen: list[str | None] = []

    @app.post("/quick/<job_id>")
    @guard_job
    def quick(job_id: str) -> tuple[str, int]:
        token = hand_off()
        assert token is not None
        with adopt(token, worker_app):
            pass  # the task ran and ended before the view returned
        seen.append(get_job_guard(app).store.holder(job_id))
        return "", 202

    client = app.test_client()
    assert client.post("/quick/q").status_code == 202
    assert seen[0] is not None  # still held by the request after the task ended
    assert get_job_guard(app).store.holder("q") is None
    assert client.post("/quick/q").status_code == 202


def test_worker_that_raises_frees_the_job(web: Web, worker_app: Flask) -> None:
    """A task that fails still releases the job (the exception propagates)."""
    assert web.post("boom").status_code == 202
    worker = Worker(worker_app, web.token(), fail=True)
    worker.start()
    assert worker.adopted.wait(WAIT)
    worker.finish()
    assert isinstance(worker.error, RuntimeError)
    assert web.post("boom").status_code == 202


def test_never_adopted_token_frees_the_job_after_the_hand_off_ttl(web: Web) -> None:
    """A task that is lost (never adopted) holds the job only until the hand-off TTL passes."""
    web.hand_off_ttl = 0.5
    assert web.post("lost").status_code == 202
    assert web.post("lost").status_code == 409
    wait_until(lambda: web.post("lost").status_code == 202, "the hand-off TTL to free it")


def test_abandoned_token_frees_the_job(web: Web, worker_app: Flask) -> None:
    """A revoked task that never runs gives its part up with abandon(): the job is free."""
    assert web.post("revoked").status_code == 202
    token = web.token()
    assert abandon(token, worker_app) is True
    assert web.post("revoked").status_code == 202
    assert abandon(token, worker_app) is False  # once is enough; again changes nothing


def test_two_tasks_each_hold_the_job(jobs_app: Factory, redis_url: str, worker_app: Flask) -> None:
    """Handing one job to two tasks: it stays active until both have ended."""
    app, _ = jobs_app({"DIAGLOG_JOB_STORE": redis_url})
    tokens: list[dict[str, str]] = []

    @app.post("/fan/<job_id>")
    @guard_job
    def fan(job_id: str) -> tuple[str, int]:
        for _ in range(2):
            token = hand_off()
            assert token is not None
            tokens.append(token)
        return "", 202

    client = app.test_client()
    assert client.post("/fan/f").status_code == 202
    first, second = (Worker(worker_app, t) for t in tokens)
    first.start()
    second.start()
    assert first.adopted.wait(WAIT) and second.adopted.wait(WAIT)
    first.finish()
    assert client.post("/fan/f").status_code == 409
    second.finish()
    assert client.post("/fan/f").status_code == 202


def test_replay_is_stored_when_the_task_ends(
    jobs_app: Factory, redis_url: str, worker_app: Flask
) -> None:
    """With replay=True: 409 while the task runs, then the view's response is replayed."""
    web = Web(jobs_app, {"DIAGLOG_JOB_STORE": redis_url}, replay=True)
    h = {"Idempotency-Key": '"order-1"'}
    first = web.post("o", headers=h)
    worker = Worker(worker_app, web.token())
    worker.start()
    assert worker.adopted.wait(WAIT)
    assert web.post("o", headers=h).status_code == 409
    worker.finish()
    again = web.post("o", headers=h)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (again.status_code, again.json) == (first.status_code, first.json)
    assert web.runs == 1


def test_failed_task_stores_no_replay(jobs_app: Factory, redis_url: str, worker_app: Flask) -> None:
    """With replay=True, a task that failed stores nothing: the retry runs the view again."""
    web = Web(jobs_app, {"DIAGLOG_JOB_STORE": redis_url}, replay=True)
    h = {"Idempotency-Key": '"order-2"'}
    web.post("o", headers=h)
    worker = Worker(worker_app, web.token(), fail=True)
    worker.start()
    worker.finish()
    again = web.post("o", headers=h)
    assert again.status_code == 202 and "Idempotent-Replayed" not in again.headers
    assert web.runs == 2


WORKER = """
import json, sys, time
from flask import Flask
from flask_diaglog import DiagLog
from flask_diaglog.jobs import adopt

app = Flask("killed_worker")
app.config.update(DIAGLOG_JOB_STORE=sys.argv[1], DIAGLOG_LOG_DIR=sys.argv[2])
DiagLog(app)
with adopt(json.loads(sys.argv[3]), app):
    print("adopted", flush=True)
    time.sleep(3600)
"""


def test_sigkilled_worker_frees_the_job_after_the_ttl(
    jobs_app: Factory, redis_url: str, tmp_path: Path
) -> None:
    """A worker process killed mid-task (no release runs): the job is free after the TTL."""
    web = Web(jobs_app, {"DIAGLOG_JOB_STORE": redis_url, "DIAGLOG_JOB_TTL": 1.0})
    assert web.post("kill").status_code == 202
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    args = [
        sys.executable,
        str(script),
        redis_url,
        str(tmp_path / "wlogs"),
        json.dumps(web.token()),
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, cwd=REPO)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"adopted"
        assert web.post("kill").status_code == 409
        proc.send_signal(signal.SIGKILL)
        proc.wait(WAIT)
        wait_until(lambda: web.post("kill").status_code == 202, "the TTL to free the job")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
        if proc.stdout is not None:
            proc.stdout.close()


def test_job_taken_over_before_adoption_runs_the_task_unguarded(
    web: Web, worker_app: Flask, tmp_path: Path
) -> None:
    """A token adopted after its job was freed and taken by a new request: the lease is marked
    lost with a WARNING, and releasing it never frees the new owner's job."""
    web.hand_off_ttl = 0.3
    assert web.post("late").status_code == 202
    stale = web.token()
    wait_until(lambda: web.post("late").status_code == 202, "the hand-off TTL to free it")
    with adopt(stale, worker_app) as lease:
        assert lease.lost
    assert web.post("late").status_code == 409  # the new owner still holds it
    [warning] = [r for r in Logs(tmp_path / "w").json("jobs") if "taken over" in r["msg"]]
    assert warning["level"] == "WARNING" and warning["job_id"] == "late"


# -- tokens and stores ---------------------------------------------------------------------------


def test_hand_off_without_a_held_job_returns_none(jobs_app: Factory) -> None:
    """Outside a guarded request (or with no job id) there is nothing to hand off: None."""
    app, _ = jobs_app()
    got: list[Any] = []

    @app.post("/open")
    def open_view() -> str:
        got.append(hand_off())
        return ""

    @app.post("/maybe")
    @guard_job
    def maybe() -> str:
        got.append(hand_off())
        return ""

    app.test_client().post("/open")
    app.test_client().post("/maybe")  # guarded, but no job id: runs unguarded
    assert got == [None, None]


def test_memory_store_hands_off_within_the_app(jobs_app: Factory) -> None:
    """With the memory store, the app's own thread can adopt the token."""
    web = Web(jobs_app, {})
    assert web.post("m").status_code == 202
    worker = Worker(web.app, web.token())
    worker.start()
    assert worker.adopted.wait(WAIT)
    assert web.post("m").status_code == 409
    worker.finish()
    assert worker.error is None
    assert web.post("m").status_code == 202


def test_memory_store_token_adopted_by_another_store_is_refused(
    jobs_app: Factory, redis_url: str, tmp_path: Path
) -> None:
    """A memory-store token cannot be adopted by another app's store: a clear HandOffError."""
    web = Web(jobs_app, {})
    web.post("m2")
    token = web.token()
    other, _ = jobs_app({"DIAGLOG_LOG_DIR": str(tmp_path / "o")})
    with pytest.raises(HandOffError, match=r"memory store.*same Redis URL"):
        adopt(token, other)
    redis_app, _ = jobs_app(
        {"DIAGLOG_JOB_STORE": redis_url, "DIAGLOG_LOG_DIR": str(tmp_path / "r")}
    )
    with pytest.raises(HandOffError, match="memory store"):
        adopt(token, redis_app)


@pytest.mark.parametrize(
    "token",
    [
        "not a dict",
        {"job_id": "x"},
        {"diaglog": "9", "job_id": "x", "lease": "t", "party": "p", "store": "s", "ttl": "1",
         "replay": "0"},
        {"diaglog": "1", "job_id": "bad id!", "lease": "t", "party": "p", "store": "s",
         "ttl": "1", "replay": "0"},
        {"diaglog": "1", "job_id": "x", "lease": "t", "party": "p", "store": "s", "ttl": "nan",
         "replay": "0"},
    ],
    ids=["not-a-dict", "missing-fields", "version", "job-id", "ttl"],
)  # fmt: skip
def test_malformed_token_raises_hand_off_error(worker_app: Flask, token: Any) -> None:
    """A token that is not what hand_off() returned is refused with HandOffError (a ValueError)."""
    with pytest.raises(HandOffError):
        adopt(token, worker_app)


def test_store_shared_lease_is_freed_by_its_last_party(store: JobStore) -> None:
    """Store contract: each party leaves once; the last one frees the lease and stores the
    record one of them left, unless a party failed; a stranger's leave changes nothing."""
    assert store.claim("s", "v -", 30).outcome == "acquired"
    assert store.share("s", "v -", "request", ["w1"], 30) is True
    assert store.share("s", "other -", "request", ["x"], 30) is False
    assert store.leave("s", "v -", "request", '{"r":1}', 60) is True
    assert store.holder("s") == "v -"
    assert store.leave("s", "other -", "w1") is False
    assert store.leave("s", "v -", "w1") is True
    assert store.holder("s") is None
    assert store.claim("s", "n -", 30, check_done=True).record == '{"r":1}'

    assert store.claim("f", "v -", 30).outcome == "acquired"
    store.share("f", "v -", "request", ["w1"], 30)
    store.leave("f", "v -", "w1", failed=True)
    store.leave("f", "v -", "request", '{"r":2}', 60)
    assert store.claim("f", "n -", 30, check_done=True).outcome == "acquired"  # nothing stored


@pytest.mark.parametrize(
    ("ttl", "problem"),
    [(1e308, "must be at most"), (float("inf"), "must be at most"), (0, "must be at least 0.1"),
     (-1, "must be 0 or more"), ("soon", "is not a number")],
)  # fmt: skip
def test_a_hand_off_ttl_the_store_cannot_hold_is_refused_naming_it(
    jobs_app: Factory, ttl: Any, problem: str
) -> None:
    """``hand_off(ttl=...)`` is checked as ``DIAGLOG_JOB_TTL`` is, before the store sees it: a
    huge TTL failed in the store (reported as an outage), and only ``> 0`` was checked."""
    web = Web(jobs_app, {})
    web.hand_off_ttl = ttl
    with pytest.raises(ValueError, match=rf"ttl=.* \(from hand_off\(\)\) {problem}"):
        web.post("h1")
    web.hand_off_ttl = None
    assert web.post("h1").status_code == 202  # the refused hand-off left the job free
