"""Celery: the trail follows tasks into real ``celery worker`` processes (prefork and threads
pools) over a real Redis broker; bad headers and a misconfigured worker.

The web side is a DiagLog app in this process (or gunicorn); the worker writes its own files in
its own log directory, as on another host.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import workers_celery_app as tasks
from celery import chain as celery_chain
from celery_fixtures import (  # noqa: F401  (fixtures)
    guarded_sender,
    module_broker,
    module_env,
    module_redis,
)
from servers import RedisServer, gunicorn
from workers_servers import (
    TESTS,
    celery_cmd,
    live_events_of_a_slow_task,
    log_lines,
    run_worker,
    wait_for,
    worker_env,
)

from flask_diaglog import guard_job, hand_off
from flask_diaglog.workers.common import parent_from, traceparent_for

pytestmark = pytest.mark.slow


def read(log_dir: Path, name: str) -> list[dict[str, Any]]:
    return log_lines(log_dir / f"{name}.log")


def lines_of(log_dir: Path, request_id: str, name: str = "jobs") -> list[dict[str, Any]]:
    return [r for r in read(log_dir, name) if r.get("request_id") == request_id]


def ended(log_dir: Path, request_id: str) -> bool:
    return any(r["event"] == "job_end" for r in lines_of(log_dir, request_id))


@pytest.fixture(scope="module")
def marks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tasks leave a file per run (the count of runs)."""
    return tmp_path_factory.mktemp("marks")


@pytest.fixture(scope="module", params=["prefork", "threads"])
def worker(
    request: pytest.FixtureRequest,
    env: dict[str, str],
    marks: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Any]:
    """A real ``celery worker`` with the prefork pool or the threads pool, reporting hangs after
    0.7 s and sending live events through the Redis message queue."""
    log_dir = tmp_path_factory.mktemp(f"celery-{request.param}")
    live = {
        "DIAGLOG_HANG_AFTER": "0.7",
        "DIAGLOG_LIVE_QUEUE": env["DIAGLOG_JOB_STORE"],
        "WORKERS_MARKS": str(marks),
    }
    with run_worker(celery_cmd(request.param), {**env, **live}, log_dir) as w:
        w.pool = request.param
        w.marks = marks
        yield w


@pytest.fixture
def web(env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The web app of this process, sending to the worker's broker."""
    monkeypatch.setattr(tasks.celery_app.conf, "broker_url", env["WORKERS_BROKER"])
    app = tasks.create_app(
        {"DIAGLOG_LOG_DIR": str(tmp_path / "web"), "DIAGLOG_JOB_STORE": env["DIAGLOG_JOB_STORE"]}
    )
    app.log_dir = tmp_path / "web"
    return app


def test_a_task_writes_its_trail_in_the_workers_jobs_log_with_the_senders_ids(
    worker: Any, web: Any
) -> None:
    """job_start, the task's log record and stage, and job_end (duration, ok, stage totals) are
    in the worker's own jobs.log, with the request id and job id of the request that sent it."""
    job_id = f"j-{uuid.uuid4().hex[:8]}"
    resp = web.test_client().post(f"/render/{job_id}")
    assert resp.status_code == 202
    rid = resp.headers["X-Request-ID"]
    wait_for(lambda: ended(worker.log_dir, rid))
    lines = lines_of(worker.log_dir, rid)
    assert [r["event"] for r in lines] == ["job_start", "log", "progress", "stage", "job_end"]
    assert all(r["job_id"] == job_id for r in lines)
    assert lines[1]["msg"] == "rendering 3"
    end = lines[-1]
    assert end["ok"] is True
    assert end["name"] == "workers_celery_app.render"
    assert set(end["stages"]) == {"render"}
    assert end["duration_ms"] >= end["stages"]["render"]
    assert all(r["pid"] != os.getpid() for r in lines)


def test_a_failing_task_goes_to_errors_log_with_its_traceback(worker: Any, web: Any) -> None:
    """The task's exception ends its job with ok false and the error, and errors.log has the
    line with the traceback."""
    resp = web.test_client().post(f"/boom/b-{uuid.uuid4().hex[:8]}")
    rid = resp.headers["X-Request-ID"]
    wait_for(lambda: ended(worker.log_dir, rid))
    (end,) = [r for r in lines_of(worker.log_dir, rid, "errors") if r["event"] == "job_end"]
    assert end["ok"] is False
    assert end["error"] == "ValueError: bad input"
    assert 'raise ValueError("bad input")' in end["exc"]


def test_celerys_own_line_about_a_failed_task_carries_the_senders_ids(
    worker: Any, web: Any
) -> None:
    """Celery logs a failed task (``Task ... raised unexpected``) after the task's run: the line
    still carries the request id and job id of the request that sent the task."""
    job_id = f"c-{uuid.uuid4().hex[:8]}"
    rid = web.test_client().post(f"/boom/{job_id}").headers["X-Request-ID"]

    def celerys() -> list[dict[str, Any]]:
        return [
            r for r in read(worker.log_dir, "errors")
            if r["logger"].startswith("celery") and "raised unexpected" in r["msg"]
            and r.get("request_id") == rid
        ]  # fmt: skip

    wait_for(lambda: ended(worker.log_dir, rid))
    wait_for(lambda: len(celerys()) == 1)
    assert celerys()[0]["job_id"] == job_id


def test_retries_are_visible_with_their_attempt_number(worker: Any, web: Any) -> None:
    """Each retry decision says which attempt comes next, and each run's job_start and job_end
    carry its attempt of 3 (the message says attempt=N from the second); the last attempt ends
    ok."""
    rid = send_from_request(web, lambda: tasks.flaky.delay())

    def ends() -> list[bool]:
        return sorted(r["ok"] for r in lines_of(worker.log_dir, rid) if r["event"] == "job_end")

    wait_for(lambda: ends() == [False, False, True])
    lines = lines_of(worker.log_dir, rid)
    notes = [r["msg"] for r in lines if r["logger"] == "flask_diaglog.worker"]
    # the threads pool may run the next attempt before the previous one wrote its last line
    assert sorted(n.split(") ", 1)[1].split(":")[0] for n in notes) == [
        "will be retried in 0s as attempt 2 of 3",
        "will be retried in 0s as attempt 3 of 3",
    ]
    starts = sorted((r for r in lines if r["event"] == "job_start"), key=lambda r: r["attempt"])
    assert [(r["attempt"], r["attempts"]) for r in starts] == [(1, 3), (2, 3), (3, 3)]
    assert starts[2]["msg"] == "job_start workers_celery_app.flaky attempt=3"
    ok_by_attempt = {r["attempt"]: r["ok"] for r in lines if r["event"] == "job_end"}
    assert ok_by_attempt == {1: False, 2: False, 3: True}
    assert len({r["task_id"] for r in starts}) == 1


def attempt_ends(log_dir: Path, rid: str, name: str = "jobs") -> list[dict[str, Any]]:
    ends = [r for r in lines_of(log_dir, rid, name) if r["event"] == "job_end"]
    return sorted(ends, key=lambda r: r["attempt"])


@pytest.mark.parametrize("task", ["flaky", "auto_flaky"])
def test_a_retried_attempt_ends_with_a_warning_naming_the_real_error(
    worker: Any, web: Any, task: str
) -> None:
    """An attempt that Celery retries (``self.retry(exc=...)``, ``autoretry_for``) ends with a
    WARNING ``job_end ... retried`` carrying the exception it was retried for, not Retry's."""
    rid = send_from_request(web, lambda: getattr(tasks, task).delay())
    wait_for(lambda: [r["ok"] for r in attempt_ends(worker.log_dir, rid)][-1:] == [True])
    first = attempt_ends(worker.log_dir, rid)[0]
    assert (first["level"], first["ok"], first["retried"]) == ("WARNING", False, True)
    expected = "ValueError: not yet" if task == "flaky" else "ValueError: boom"
    assert first["error"] == expected
    assert first["msg"].startswith(f"job_end workers_celery_app.{task} retried ")
    assert first["msg"].endswith(f": {expected}")


def test_a_retried_attempt_is_not_a_failed_job(worker: Any, web: Any) -> None:
    """A task that succeeds on its retry leaves no job_end in errors.log, and the summary of
    the worker's files counts no failed background job."""
    rid = send_from_request(web, lambda: tasks.auto_flaky.delay())
    wait_for(lambda: [r["ok"] for r in attempt_ends(worker.log_dir, rid)][-1:] == [True])
    assert attempt_ends(worker.log_dir, rid, "errors") == []
    from flask import Flask

    from flask_diaglog.cli import diaglog_cli

    out = (
        Flask(__name__)
        .test_cli_runner()
        .invoke(diaglog_cli, ["summary", "--log-dir", str(worker.log_dir), "--json"])
    )
    failed = json.loads(out.output)["failed"]
    assert [f for f in failed if f.get("request_id") == rid] == []


def send_from_request(web: Any, send: Any) -> str:
    """Send a task from inside a real request of ``web``; its request id."""
    rule = f"/send-{uuid.uuid4().hex[:6]}"
    web.add_url_rule(rule, rule, lambda: (send(), "")[1], methods=["POST"])
    return str(web.test_client().post(rule).headers["X-Request-ID"])


def process_gone(pid: int) -> bool:
    """The process has exited (gone, or a zombie its parent has yet to reap): whatever it
    wrote is in the files."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def lines_of_job(log_dir: Path, job_id: str) -> list[dict[str, Any]]:
    """Every line of ``job_id`` in ``jobs.log``, whatever its request id."""
    return [r for r in read(log_dir, "jobs") if r.get("job_id") == job_id]


def job_free(web: Any, job_id: str) -> bool:
    return web.extensions["diaglog"].guard.store.holder(job_id) is None


def test_a_task_killed_by_its_hard_time_limit_ends_with_a_line(worker: Any, web: Any) -> None:
    """Prefork: the main worker process writes the task's last line (ERROR, outcome
    time_limit) with the sender's ids; once the task's process is gone the job is free, freed
    once: no line about a job no longer held, and the task's own job_end (when its process got
    to write it before SIGKILL) says it was killed by its hard time limit."""
    if worker.pool != "prefork":
        pytest.skip("hard time limits need the prefork pool")
    job_id = f"t-{uuid.uuid4().hex[:8]}"
    resp = web.test_client().post(f"/too_slow/{job_id}")
    rid = resp.headers["X-Request-ID"]

    def killed() -> list[dict[str, Any]]:
        return [r for r in lines_of(worker.log_dir, rid) if r.get("outcome") == "time_limit"]

    wait_for(killed)
    (line,) = killed()
    assert line["level"] == "ERROR"
    assert "hard time limit (1s)" in line["msg"]
    (mark,) = [p for p in worker.marks.glob("too_slow-*") if p.read_text() == job_id]
    wait_for(lambda: process_gone(int(mark.name.split("-")[1])))
    wait_for(lambda: job_free(web, job_id))
    lines = lines_of_job(worker.log_dir, job_id)
    assert {r.get("request_id") for r in lines} == {rid}
    assert [r["msg"] for r in lines if r["logger"] == "flask_diaglog.jobs"] == []
    ends = [r for r in lines if r["event"] == "job_end"]
    assert len(ends) <= 1
    for end in ends:
        assert end["error"] == "TaskTerminated: killed by its hard time limit (1s)"
    assert post(web, f"/too_slow/{job_id}").status_code == 202


def test_a_task_whose_pool_process_is_killed_ends_with_a_line_and_frees_its_job(
    worker: Any, web: Any
) -> None:
    """Prefork: a pool process SIGKILLed from outside while it runs a guarded task (what the OOM
    killer does) writes nothing more; the worker's main process writes the task's last line
    (ERROR, outcome killed, the sender's ids), and the same job id is accepted again at once."""
    if worker.pool != "prefork":
        pytest.skip("killing the process of one task needs the prefork pool")
    job_id = f"o-{uuid.uuid4().hex[:8]}"
    resp = post(web, f"/slow/{job_id}?seconds=60")
    assert resp.status_code == 202
    rid = resp.headers["X-Request-ID"]

    def starts() -> list[dict[str, Any]]:
        return [r for r in lines_of(worker.log_dir, rid) if r["event"] == "job_start"]

    wait_for(starts)
    os.kill(starts()[0]["pid"], signal.SIGKILL)

    def killed() -> list[dict[str, Any]]:
        return [r for r in lines_of(worker.log_dir, rid) if r.get("outcome") == "killed"]

    wait_for(killed, timeout=30)
    assert post(web, f"/slow/{job_id}?seconds=0.1").status_code == 202
    (line,) = killed()
    assert (line["level"], line["job_id"]) == ("ERROR", job_id)
    assert line["msg"].startswith(f"task workers_celery_app.slow ({starts()[0]['task_id']}) ")
    assert "its pool process exited" in line["msg"]
    assert "SIGKILL" in line["msg"]
    lines = lines_of_job(worker.log_dir, job_id)
    assert not [r for r in lines if r["event"] == "job_end" and r.get("request_id") == rid]
    assert [r["msg"] for r in lines if r["logger"] == "flask_diaglog.jobs"] == []


def revoke_while_running(worker: Any, web: Any, signal: str) -> tuple[str, str, int, Any]:
    """Send ``stubborn`` from a guarded request, wait until it runs, revoke it with
    ``terminate=True`` and ``signal`` (the worker has handled it when this returns): its job id,
    request id, the task's process id and a client of ``web``."""
    gate = uuid.uuid4().hex[:8]
    job_id = f"x-{gate}"
    sent: list[Any] = []
    rule = guarded_sender(web, lambda: None if sent else sent.append(tasks.stubborn.delay(gate)))
    client = web.test_client()
    rid = client.post(rule, headers={"X-Job-ID": job_id}).headers["X-Request-ID"]
    pid_file = worker.marks / f"pid-{gate}"
    wait_for(lambda: pid_file.exists() and pid_file.read_text())
    replies = tasks.celery_app.control.revoke(
        sent[0].id, terminate=True, signal=signal, reply=True, limit=1, timeout=15
    )
    assert replies, "the worker did not answer the revoke"
    return job_id, rid, int(pid_file.read_text()), (client, rule, gate)


def test_a_task_revoked_while_it_runs_frees_its_job_once_its_process_is_gone(
    worker: Any, web: Any
) -> None:
    """revoke(terminate=True): while the task's process still runs after SIGTERM (its cleanup)
    duplicates get 409; once it has ended the job is free, freed once (no line about a job no
    longer held), its job_end says it was terminated, every line has the sender's ids."""
    if worker.pool != "prefork":
        pytest.skip("terminating a running task needs the prefork pool")
    job_id, rid, pid, (client, rule, gate) = revoke_while_running(worker, web, "SIGTERM")
    try:
        assert client.post(rule, headers={"X-Job-ID": job_id}).status_code == 409
    finally:
        (worker.marks / f"cleanup-{gate}").write_text("")
    wait_for(lambda: process_gone(pid))
    wait_for(lambda: job_free(web, job_id))
    lines = lines_of_job(worker.log_dir, job_id)
    assert {r.get("request_id") for r in lines} == {rid}
    assert [r["msg"] for r in lines if r["logger"] == "flask_diaglog.jobs"] == []
    (revoked,) = [r for r in lines if r.get("outcome") == "revoked"]
    assert "was revoked and terminated (SIGTERM)" in revoked["msg"]
    (end,) = [r for r in lines if r["event"] == "job_end"]
    assert (end["ok"], end["level"]) == (False, "ERROR")
    assert end["error"] == (
        "TaskTerminated: terminated by SIGTERM while it ran (revoked with terminate=True, or a "
        "cold shutdown of the worker)"
    )


def test_a_task_revoked_with_sigkill_frees_its_job_once_its_process_is_gone(
    worker: Any, web: Any
) -> None:
    """revoke(terminate=True, signal="SIGKILL"): the task's process writes nothing more; the
    worker's line says so and the job is free once the process is gone."""
    if worker.pool != "prefork":
        pytest.skip("terminating a running task needs the prefork pool")
    job_id, rid, pid, _ = revoke_while_running(worker, web, "SIGKILL")
    wait_for(lambda: process_gone(pid))
    wait_for(lambda: job_free(web, job_id))
    lines = lines_of_job(worker.log_dir, job_id)
    assert {r.get("request_id") for r in lines} == {rid}
    assert [r["event"] for r in lines if r["event"] != "hang"] == ["job_start", "log"]
    (revoked,) = [r for r in lines if r.get("outcome") == "revoked"]
    assert "was revoked and terminated (SIGKILL)" in revoked["msg"]


def test_a_task_revoked_before_it_runs_ends_with_a_line(worker: Any, web: Any) -> None:
    """A revoked task never runs; the worker writes a line saying so, with the sender's ids."""
    result: list[Any] = []
    rid = send_from_request(web, lambda: result.append(tasks.render.apply_async((1,), countdown=3)))
    result[0].revoke()

    def revoked() -> list[dict[str, Any]]:
        return [r for r in lines_of(worker.log_dir, rid) if r.get("outcome") == "revoked"]

    wait_for(revoked)
    assert "revoked before it ran" in revoked()[0]["msg"]
    assert not [r for r in lines_of(worker.log_dir, rid) if r["event"] == "job_start"]


def test_malformed_headers_run_with_fresh_ids_and_a_warning(
    worker: Any, env: dict[str, str]
) -> None:
    """A task sent by a process without diaglog, with a broken request id header, runs normally
    under a fresh request id; a WARNING line names the header."""
    job = f"m-{uuid.uuid4().hex[:8]}"
    code = (
        "import sys; from celery import Celery; "
        "c = Celery(broker=sys.argv[1]); "
        "c.send_task('workers_celery_app.render', args=[5], "
        "headers={'diaglog_request_id': 'not an id!', 'diaglog_job_id': sys.argv[2]})"
    )
    subprocess.run(
        [sys.executable, "-c", code, env["WORKERS_BROKER"], job],
        env=worker_env({}),
        check=True,
        timeout=30,
    )

    def mine() -> list[dict[str, Any]]:
        return [r for r in read(worker.log_dir, "jobs") if r.get("job_id") == job]

    wait_for(lambda: any(r["event"] == "job_end" for r in mine()))
    lines = mine()
    warning = next(r for r in lines if r["level"] == "WARNING")
    assert "diaglog_request_id='not an id!' is not a valid id" in warning["msg"]
    assert lines[-1]["ok"] is True
    assert len({r["request_id"] for r in lines}) == 1
    assert lines[0]["request_id"] != "not an id!"


def send_raw(env: dict[str, str], name: str, headers: list[dict[str, Any]]) -> list[str]:
    """Send task ``name`` once per headers, from a process without diaglog; the task ids."""
    code = (
        "import json, sys; from celery import Celery; "
        "c = Celery(broker=sys.argv[1]); "
        "print(json.dumps([c.send_task(sys.argv[2], args=[1], headers=h).id "
        "for h in json.loads(sys.argv[3])]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, env["WORKERS_BROKER"], name, json.dumps(headers)],
        env=worker_env({}),
        check=True,
        timeout=30,
        capture_output=True,
        text=True,
    )
    return list(json.loads(out.stdout))


def lines_of_task(log_dir: Path, task_id: str) -> list[dict[str, Any]]:
    """The lines of one task run in ``jobs.log``: from its first line with its task id to its
    job_end (the lines in between carry the run's thread)."""
    lines = read(log_dir, "jobs")
    start = next(r for r in lines if r.get("task_id") == task_id)
    mine = [r for r in lines if r.get("request_id") == start["request_id"]]
    return [r for r in mine if r.get("task_id") in (task_id, None)]


def hand_off_tokens(web: Any, job_ids: list[str]) -> list[dict[str, str]]:
    """A real hand-off token of each job id, from guarded requests that ended since."""
    tokens: list[Any] = []
    rule = guarded_sender(web, lambda: tokens.append(hand_off()))
    client = web.test_client()
    for job_id in job_ids:
        assert client.post(rule, headers={"X-Job-ID": job_id}).status_code == 202
    return [dict(t) for t in tokens]


def task_ended(log_dir: Path, task_id: str) -> bool:
    return any(
        r.get("task_id") == task_id and r["event"] == "job_end" for r in read(log_dir, "jobs")
    )


def test_malformed_lease_and_id_headers_run_unguarded_with_a_warning_naming_the_header(
    worker: Any, web: Any, env: dict[str, str]
) -> None:
    """A lease header that is not a diaglog token, whose ttl is not a lease TTL (huge, infinite,
    negative), whose replay flag is neither 0 nor 1, that comes without the job id it holds, or
    with another job's id: the task runs normally, unguarded, after a WARNING line that names
    ``diaglog_lease`` (and the ids of the other headers when they are valid). A whole number
    job id is taken as its text, as the guard does."""
    run = uuid.uuid4().hex[:8]
    bad = [
        ("huge", {"ttl": "1e308"}, "ttl='1e308'"),
        ("inf", {"ttl": "inf"}, "ttl='inf'"),
        ("negative", {"ttl": "-30.0"}, "ttl='-30.0'"),
        ("replay", {"replay": "yes"}, "invalid replay 'yes'"),
    ]
    jobs = [f"{case}-{uuid.uuid4().hex[:8]}" for case in [b[0] for b in bad] + ["alone", "other"]]
    tokens = hand_off_tokens(web, jobs)
    cases: dict[str, tuple[dict[str, Any], str]] = {}
    for (case, change, why), job_id, token in zip(bad, jobs, tokens, strict=False):
        lease = {**token, **change}
        headers = {
            "diaglog_request_id": f"r-{case}-{run}",
            "diaglog_job_id": job_id,
            "diaglog_lease": lease,
        }
        cases[case] = (headers, why)
    cases["alone"] = (
        {"diaglog_lease": tokens[-2]},
        f"diaglog_lease (job '{jobs[-2]}') comes without a valid diaglog_job_id",
    )
    cases["other"] = (
        {
            "diaglog_request_id": f"r-other-{run}",
            "diaglog_job_id": "someone-else",
            "diaglog_lease": tokens[-1],
        },
        f"diaglog_lease holds job '{jobs[-1]}', not diaglog_job_id='someone-else'",
    )
    cases["text"] = (
        {"diaglog_request_id": f"r-text-{run}", "diaglog_job_id": "t1", "diaglog_lease": "a token"},
        "diaglog_lease is not a job lease token (a str)",
    )
    cases["number"] = ({"diaglog_request_id": f"r-number-{run}", "diaglog_job_id": 5}, "")
    ids = dict(
        zip(
            cases,
            send_raw(env, "workers_celery_app.render", [h for h, _ in cases.values()]),
            strict=True,
        )
    )
    for case, (headers, why) in cases.items():
        task_id = ids[case]
        wait_for(lambda: task_ended(worker.log_dir, task_id))  # noqa: B023
        lines = lines_of_task(worker.log_dir, task_id)
        warnings = [r["msg"] for r in lines if r["level"] == "WARNING"]
        assert [r["ok"] for r in lines if r["event"] == "job_end"] == [True], case
        if case == "alone":
            assert not lines[0]["request_id"].startswith("r-")
            assert all("job_id" not in r for r in lines)
        elif case == "number":
            assert warnings == []
            assert {r.get("job_id") for r in lines} == {"5"}
            continue
        else:
            assert {(r["request_id"], r.get("job_id")) for r in lines} == {
                (headers["diaglog_request_id"], headers["diaglog_job_id"])
            }, case
        assert [w for w in warnings if "header diaglog_lease" in w and why in w
                and w.endswith("it runs unguarded")], (case, warnings)  # fmt: skip


def test_a_worker_without_a_shared_job_store_fails_at_startup(
    env: dict[str, str], tmp_path: Path
) -> None:
    """With the memory job store the worker exits at once, naming DIAGLOG_JOB_STORE."""
    proc = subprocess.run(
        celery_cmd("solo"),
        env=worker_env({**env, "DIAGLOG_JOB_STORE": "memory", "DIAGLOG_LOG_DIR": str(tmp_path)}),
        cwd=str(Path(__file__).parent),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "DIAGLOG_JOB_STORE='memory'" in proc.stderr
    assert "Set DIAGLOG_JOB_STORE" in proc.stderr


def test_headers_carry_the_ids_and_a_w3c_traceparent(web: Any) -> None:
    """A task sent during a request carries its request id, job id and a traceparent whose trace
    id is derived from the request id; read back they give the same parent."""
    from celery import signals

    seen: list[dict[str, Any]] = []

    def capture(headers: dict[str, Any] | None = None, **_: Any) -> None:
        seen.append(dict(headers or {}))

    signals.before_task_publish.connect(capture, weak=False)
    try:
        rid = send_from_request_with_job(web, "hj1")
    finally:
        signals.before_task_publish.disconnect(capture)
    (headers,) = [h for h in seen if h.get("diaglog_request_id") == rid]
    assert headers["diaglog_job_id"] == "hj1"
    trace_id = headers["traceparent"].split("-")[1]
    assert trace_id == traceparent_for(rid).split("-")[1]
    parent, problems = parent_from(headers.get)
    assert (parent.request_id, parent.job_id, problems) == (rid, "hj1", [])


def send_from_request_with_job(web: Any, job_id: str) -> str:
    rule = f"/sendj-{uuid.uuid4().hex[:6]}"
    web.add_url_rule(rule, rule, lambda: (tasks.render.delay(1), "")[1], methods=["POST"])
    return str(web.test_client().post(rule, headers={"X-Job-ID": job_id}).headers["X-Request-ID"])


# -- the guard follows the work ------------------------------------------------------------------


def post(web: Any, path: str) -> Any:
    return web.test_client().post(path)


def test_the_job_stays_active_until_the_task_ends_then_its_response_is_replayed(
    worker: Any, web: Any
) -> None:
    """While the task runs on the worker a second request gets 409; once it ended, the same
    request gets the stored response back (replay), and no second task runs."""
    job_id = f"s-{uuid.uuid4().hex[:8]}"
    first = post(web, f"/slow/{job_id}?seconds=1.5")
    assert first.status_code == 202
    rid = first.headers["X-Request-ID"]
    assert post(web, f"/slow/{job_id}?seconds=1.5").status_code == 409
    wait_for(lambda: ended(worker.log_dir, rid))
    wait_for(lambda: post(web, f"/slow/{job_id}?seconds=1.5").status_code != 409)
    again = post(web, f"/slow/{job_id}?seconds=1.5")
    assert again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == {"job_id": job_id}


def test_a_failed_task_frees_its_job(worker: Any, web: Any) -> None:
    """The task raised: the job is free again for a new request."""
    job_id = f"f-{uuid.uuid4().hex[:8]}"
    rid = post(web, f"/boom/{job_id}").headers["X-Request-ID"]
    wait_for(lambda: ended(worker.log_dir, rid))
    wait_for(lambda: post(web, f"/boom/{job_id}").status_code == 202)


def test_a_revoked_task_frees_its_job(worker: Any, web: Any) -> None:
    """Revoked before it ran: the worker gives its part of the job up."""
    sent: list[Any] = []
    rule = f"/guarded-{uuid.uuid4().hex[:6]}"

    @guard_job
    def view() -> Any:
        sent.append(tasks.render.apply_async((1,), countdown=2))
        return "", 202

    web.add_url_rule(rule, rule, view, methods=["POST"])
    client = web.test_client()
    job = {"X-Job-ID": f"r-{uuid.uuid4().hex[:8]}"}
    assert client.post(rule, headers=job).status_code == 202
    assert client.post(rule, headers=job).status_code == 409
    sent[0].revoke()
    wait_for(lambda: client.post(rule, headers=job).status_code == 202)


def test_the_job_of_a_sigkilled_worker_is_free_after_its_ttl(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nobody renews the lease of a killed worker: the job is free after DIAGLOG_JOB_TTL."""
    monkeypatch.setattr(tasks.celery_app.conf, "broker_url", env["WORKERS_BROKER"])
    queue = f"q{uuid.uuid4().hex[:6]}"  # this worker alone takes the task
    web = tasks.create_app(
        {
            "DIAGLOG_LOG_DIR": str(tmp_path / "web"),
            "DIAGLOG_JOB_STORE": env["DIAGLOG_JOB_STORE"],
            "DIAGLOG_JOB_TTL": 1.5,
        }
    )
    rule = "/slow-alone"

    @guard_job
    def view() -> Any:
        tasks.slow.apply_async((60,), queue=queue)
        return "", 202

    web.add_url_rule(rule, rule, view, methods=["POST"])
    client = web.test_client()
    job = {"X-Job-ID": f"k-{uuid.uuid4().hex[:8]}"}
    cmd = [*celery_cmd("solo", 1), "--queues", queue]
    with run_worker(cmd, env, tmp_path / "worker") as w:
        rid = client.post(rule, headers=job).headers["X-Request-ID"]
        wait_for(lambda: any(r["event"] == "job_start" for r in lines_of(w.log_dir, rid)))
        assert client.post(rule, headers=job).status_code == 409  # renewed past its TTL
        w.kill()
        wait_for(lambda: client.post(rule, headers=job).status_code == 202)


def test_redis_down_at_enqueue_gives_the_guards_503(tmp_path: Path) -> None:
    """The job store (the same Redis) is unreachable: the guarded view answers 503
    problem+json and sends nothing."""
    server = RedisServer()
    server.start()
    url = server.url
    web = tasks.create_app({"DIAGLOG_LOG_DIR": str(tmp_path), "DIAGLOG_JOB_STORE": url})
    server.close()
    resp = post(web, "/render/down-1")
    assert resp.status_code == 503
    assert resp.mimetype == "application/problem+json"


def test_200_concurrent_duplicates_across_gunicorn_workers_run_one_task(
    worker: Any, env: dict[str, str], marks: Path, tmp_path: Path
) -> None:
    """gunicorn -w 4, 200 concurrent requests for one job id, the task on the worker process:
    exactly one task runs; every other request got 409 or, after it ended, the replay."""
    if worker.pool != "prefork":
        pytest.skip("one web-side run is enough")
    job_id = f"c-{uuid.uuid4().hex[:8]}"
    web_env = {**env, "DIAGLOG_LOG_DIR": str(tmp_path / "web")}
    with gunicorn("workers_celery_app:app", workers=4, env=web_env, pythonpath=TESTS) as base:

        def hit(_: int) -> tuple[int, str | None]:
            req = urllib.request.Request(f"{base}/slow/{job_id}?seconds=2", method="POST")
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    return resp.status, resp.headers.get("Idempotent-Replayed")
            except urllib.error.HTTPError as exc:
                with exc:  # closed now, not when collected (an unclosed socket fails the run)
                    return exc.code, None

        with ThreadPoolExecutor(40) as pool:
            answers = list(pool.map(hit, range(200)))
    fresh = [a for a in answers if a == (202, None)]
    assert len(fresh) == 1
    assert {status for status, _ in answers} <= {202, 409}
    wait_for(lambda: any(p.read_text() == job_id for p in marks.glob("slow-*")))
    time.sleep(0.5)  # a second run, if there were one, would have started by now
    assert [p.read_text() for p in marks.glob("slow-*")].count(job_id) == 1


def test_worker_events_and_hang_reports_reach_live_clients_through_redis(
    worker: Any, env: dict[str, str], tmp_path: Path
) -> None:
    """A Socket.IO client of the web app, subscribed to a job, hears the task's job_start,
    stage, hang report (with its stage) and job_end from the worker process; the hang report
    with the stack is in the worker's jobs.log."""
    if worker.pool != "prefork":
        pytest.skip("one web-side run is enough")
    job_id = f"l-{uuid.uuid4().hex[:8]}"
    events = live_events_of_a_slow_task("workers_celery_app:app", env, tmp_path / "web", job_id)
    from_worker = [e for e in events if e["event"] in ("job_start", "stage", "hang", "job_end")]
    assert [e["event"] for e in from_worker] == ["job_start", "hang", "stage", "job_end"]
    assert {e["pid"] for e in from_worker} != {
        e["pid"] for e in events if e["event"] == "request_end"
    }
    hang = from_worker[1]
    assert hang["stage"] == "wait"
    (line,) = [
        r
        for r in read(worker.log_dir, "jobs")
        if r["event"] == "hang" and r.get("job_id") == job_id
    ]
    assert "time.sleep(seconds)" in line["exc"]


# -- tasks sent by tasks: chains, link callbacks, children ---------------------------------------


def chained(kind: str, gate: str) -> Any:
    """``render`` then ``gated(gate)``, as a chain or as a ``link`` callback."""
    if kind == "chain":
        return lambda: celery_chain(tasks.render.si(1), tasks.gated.si(gate)).delay()
    return lambda: tasks.render.apply_async((1,), link=tasks.gated.si(gate))


@pytest.mark.parametrize("kind", ["chain", "link"])
def test_the_next_task_of_a_chain_or_a_link_carries_the_senders_ids(
    worker: Any, web: Any, marks: Path, kind: str
) -> None:
    """The task Celery sends after the first one ended (a chain's next task, a link callback)
    writes its trail with the request id and job id of the request that sent the chain."""
    gate = uuid.uuid4().hex[:8]
    job = {"X-Job-ID": f"n-{gate}"}
    rule = guarded_sender(web, chained(kind, gate))
    rid = web.test_client().post(rule, headers=job).headers["X-Request-ID"]
    (marks / f"open-{gate}").write_text("")
    wait_for(lambda: (marks / f"started-{gate}").exists())
    assert (marks / f"started-{gate}").read_text() == job["X-Job-ID"]
    wait_for(
        lambda: len([r for r in lines_of(worker.log_dir, rid) if r["event"] == "job_end"]) == 2
    )
    names = [r["name"] for r in lines_of(worker.log_dir, rid) if r["event"] == "job_start"]
    assert names == ["workers_celery_app.render", "workers_celery_app.gated"]


@pytest.mark.parametrize("kind", ["chain", "link"])
def test_a_chain_or_a_link_holds_the_job_until_its_last_task_ends(
    worker: Any, web: Any, marks: Path, kind: str
) -> None:
    """While the second task of a chain (or a link callback) runs, after the first one ended, a
    duplicate gets 409; once it ended, the job is free."""
    gate = uuid.uuid4().hex[:8]
    job = {"X-Job-ID": f"h-{gate}"}
    rule = guarded_sender(web, chained(kind, gate))
    client = web.test_client()
    assert client.post(rule, headers=job).status_code == 202
    try:
        wait_for(lambda: (marks / f"started-{gate}").exists())
        assert client.post(rule, headers=job).status_code == 409
    finally:
        (marks / f"open-{gate}").write_text("")  # the worker is free for the next tests
    wait_for(lambda: client.post(rule, headers=job).status_code == 202)


def test_a_task_sent_by_a_task_holds_the_job_while_it_waits_in_its_queue(
    worker: Any, web: Any
) -> None:
    """A task sends a child task (to a queue no worker takes yet) and ends: the job stays
    active for the child, which has yet to run."""
    queue = f"nobody-{uuid.uuid4().hex[:6]}"
    job = {"X-Job-ID": f"p-{uuid.uuid4().hex[:8]}"}
    rule = guarded_sender(web, lambda: tasks.parent.delay(queue))
    client = web.test_client()
    rid = client.post(rule, headers=job).headers["X-Request-ID"]
    wait_for(lambda: ended(worker.log_dir, rid))
    (end,) = [r for r in lines_of(worker.log_dir, rid) if r["event"] == "job_end"]
    wait_for(lambda: celery_says_succeeded(worker.log_dir, end["task_id"]))
    assert client.post(rule, headers=job).status_code == 409


def celery_says_succeeded(log_dir: Path, task_id: str) -> bool:
    """Celery's own ``Task ...[id] succeeded`` line is out: the task's run is over."""
    return any(f"[{task_id}] succeeded" in r["msg"] for name in ("jobs", "requests")
               for r in read(log_dir, name))  # fmt: skip
