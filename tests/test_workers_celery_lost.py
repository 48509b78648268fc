"""Celery: what a real prefork ``celery worker`` writes about a task that ends outside its run
(its pool process killed, its hard time limit, revoked), and the task's next run when Celery
runs it again after its pool process died (``reject_on_worker_lost``, ``retry_on_worker_lost``).

The tasks kill their own pool process with SIGKILL, as the OOM killer would
(``workers_celery_app._dies_once``). The worker's main process notices within seconds (billiard
checks its pool processes periodically; ``worker_lost_wait`` is 1 s in the test app).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import workers_celery_app as tasks
from celery_fixtures import (  # noqa: F401  (fixtures)
    guarded_sender,
    module_broker,
    module_env,
    module_redis,
)
from workers_servers import celery_cmd, log_lines, run_worker, wait_for

pytestmark = pytest.mark.slow

#: Time for the main process to notice a dead pool process (billiard looks every few seconds).
NOTICED = 30


@pytest.fixture(scope="module")
def worker(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real ``celery worker`` with the prefork pool (its tasks leave files in ``marks``)."""
    marks = tmp_path_factory.mktemp("marks")
    log_dir = tmp_path_factory.mktemp("celery-lost")
    with run_worker(celery_cmd("prefork"), {**env, "WORKERS_MARKS": str(marks)}, log_dir) as w:
        w.marks = marks
        yield w


@pytest.fixture
def web(env: dict[str, str], tmp_path: Path) -> Any:
    """The web app of this process, sending to the worker's broker (see ``broker``)."""
    return tasks.create_app(
        {"DIAGLOG_LOG_DIR": str(tmp_path / "web"), "DIAGLOG_JOB_STORE": env["DIAGLOG_JOB_STORE"]}
    )


def read(log_dir: Path, name: str) -> list[dict[str, Any]]:
    return log_lines(log_dir / f"{name}.log")


def guarded(web: Any, send: Callable[[], Any]) -> tuple[Any, str]:
    """A guarded view (job id in X-Job-ID) that calls ``send()``: a client and its URL rule."""
    return web.test_client(), guarded_sender(web, send)


def job_free(web: Any, job_id: str) -> bool:
    return web.extensions["diaglog"].guard.store.holder(job_id) is None


def celerys_line(log_dir: Path, start: str) -> Callable[[], list[dict[str, Any]]]:
    """The lines of Celery (or billiard) in the worker's files whose message starts so."""

    def lines() -> list[dict[str, Any]]:
        return [
            r for r in read(log_dir, "requests")
            if not r["logger"].startswith("flask_diaglog") and r["msg"].startswith(start)
        ]  # fmt: skip

    return lines


def test_celerys_lines_about_a_task_whose_pool_process_died_carry_its_ids(
    worker: Any, web: Any
) -> None:
    """The pool process running a guarded task dies: billiard's ``Process ... exited`` line,
    Celery's ``Task handler raised error: WorkerLostError(...)`` and its ``received`` line carry
    the request id and job id of the request that sent the task, as diaglog's own ``killed``
    line does; the error callback Celery sends from its main process carries them too."""
    gate = uuid.uuid4().hex[:8]
    job_id = f"k-{gate}"
    sent: list[Any] = []
    client, rule = guarded(
        web, lambda: sent.append(tasks.lost.apply_async((gate,), link_error=tasks.render.si(5)))
    )
    rid = client.post(rule, headers={"X-Job-ID": job_id}).headers["X-Request-ID"]
    task_id = sent[0].id

    def killed() -> list[dict[str, Any]]:
        return [r for r in read(worker.log_dir, "jobs")
                if r.get("task_id") == task_id and r.get("outcome") == "killed"]  # fmt: skip

    wait_for(killed, NOTICED)
    assert [(r["request_id"], r["job_id"]) for r in killed()] == [(rid, job_id)]
    lost = celerys_line(worker.log_dir, "Task handler raised error: WorkerLostError(")
    wait_for(lambda: [r for r in lost() if r.get("request_id") == rid])  # just after killed
    (start,) = [r for r in read(worker.log_dir, "jobs") if r.get("task_id") == task_id
                and r["event"] == "job_start"]  # fmt: skip
    lines = {
        "received": celerys_line(worker.log_dir, f"Task workers_celery_app.lost[{task_id}] ")(),
        "exited": [
            r
            for r in celerys_line(worker.log_dir, "Process 'ForkPoolWorker-")()
            if f"pid:{start['pid']} exited with 'signal 9 (SIGKILL)'" in r["msg"]
        ],
        "lost": [r for r in lost() if r.get("request_id") == rid],
    }
    for what, found in lines.items():
        assert [(r["request_id"], r["job_id"]) for r in found] == [(rid, job_id)], what
    errors = {r["logger"] for r in read(worker.log_dir, "errors") if r.get("request_id") == rid}
    assert errors >= {"multiprocessing", "celery.worker.request", "flask_diaglog.worker"}

    def errback() -> list[dict[str, Any]]:
        return [r for r in read(worker.log_dir, "jobs")
                if r["event"] == "job_end" and r["name"] == "workers_celery_app.render"
                and r.get("job_id") == job_id]  # fmt: skip

    wait_for(errback)
    assert [r["request_id"] for r in errback()] == [rid]


def send_and_end(worker: Any, case: str, gate: str) -> tuple[Callable[[], Any], Any]:
    """What a guarded view sends for ``case``, and how the test then ends the task."""
    sent: list[Any] = []

    def send() -> None:
        if case == "time_limit":
            sent.append(tasks.too_slow.delay())
        elif case == "revoked":
            sent.append(tasks.render.apply_async((1,), countdown=2))
        else:
            sent.append(tasks.gated.delay(gate))

    def end() -> Any:
        if case == "revoked":
            sent[0].revoke()
        elif case == "terminated":
            started = worker.marks / f"started-{gate}"
            wait_for(started.exists)
            replies = tasks.celery_app.control.revoke(
                sent[0].id, terminate=True, reply=True, limit=1, timeout=15
            )
            assert replies, "the worker did not answer the revoke"
        return sent[0].id

    return send, end


@pytest.mark.parametrize(
    ("case", "line"),
    [
        ("time_limit", "Hard time limit (1s) exceeded for workers_celery_app.too_slow[{}]"),
        ("revoked", "Discarding revoked task: workers_celery_app.render[{}]"),
        ("terminated", "Terminating {} (15)"),
    ],
)
def test_celerys_lines_about_a_task_that_ended_outside_its_run_carry_its_ids(
    worker: Any, web: Any, case: str, line: str
) -> None:
    """Killed by its hard time limit, revoked before it ran, or revoked and terminated while
    it ran: Celery's line about it, written by the worker's main process, carries the sender's
    request id and job id."""
    gate = uuid.uuid4().hex[:8]
    job_id = f"t-{gate}"
    send, end = send_and_end(worker, case, gate)
    client, rule = guarded(web, send)
    rid = client.post(rule, headers={"X-Job-ID": job_id}).headers["X-Request-ID"]
    try:
        found = celerys_line(worker.log_dir, line.format(end()))
        wait_for(found, NOTICED)
    finally:
        (worker.marks / f"open-{gate}").write_text("")
    assert [(r["request_id"], r["job_id"]) for r in found()] == [(rid, job_id)]
    wait_for(lambda: job_free(web, job_id))


@pytest.mark.parametrize("task", ["redelivered", "resent"])
def test_a_task_run_again_after_its_pool_process_died_keeps_its_ids_and_its_job(
    worker: Any, web: Any, task: str
) -> None:
    """``reject_on_worker_lost`` (the message goes back to its queue) and
    ``retry_on_worker_lost`` (Celery's main process sends the task again): the next run has the
    request id and job id of the request that sent the task and holds its job (a duplicate gets
    409 while it runs, without a line about a job that was free); when it ends the job is
    free."""
    gate = uuid.uuid4().hex[:8]
    job_id = f"r-{gate}"
    client, rule = guarded(web, lambda: getattr(tasks, task).delay(gate))
    rid = client.post(rule, headers={"X-Job-ID": job_id}).headers["X-Request-ID"]
    ran = worker.marks / f"ran-{gate}"
    try:
        wait_for(lambda: ran.exists() and ran.read_text(), NOTICED)
        assert ran.read_text() == job_id
        assert client.post(rule, headers={"X-Job-ID": job_id}).status_code == 409
    finally:
        (worker.marks / f"open-{gate}").write_text("")
    wait_for(lambda: job_free(web, job_id))

    def runs() -> list[dict[str, Any]]:
        return [r for r in read(worker.log_dir, "jobs") if r.get("job_id") == job_id]

    wait_for(lambda: any(r["event"] == "job_end" for r in runs()))
    lines = runs()
    starts = [r for r in lines if r["event"] == "job_start"]
    assert len(starts) == 2
    assert len({r["pid"] for r in starts}) == 2
    attempts = [2] if task == "resent" else [1]
    assert [r["attempt"] for r in starts[1:]] == attempts
    (end,) = [r for r in lines if r["event"] == "job_end"]
    assert end["ok"] is True
    assert {r["request_id"] for r in lines} == {rid}
    assert [r["msg"] for r in lines if r["logger"] == "flask_diaglog.jobs"] == []
    celerys = f"Task workers_celery_app.resent[{end['task_id']}] retry: Retry in 0s: WorkerLost"
    if task == "redelivered":
        celerys = "Task handler raised error: WorkerLostError("
    said = [r for r in celerys_line(worker.log_dir, celerys)() if r.get("job_id") == job_id]
    assert [r["request_id"] for r in said] == [rid]


def test_the_apps_own_request_class_stays(tmp_path: Path) -> None:
    """init_celery gives the app's base task class diaglog's worker request class, unless that
    class has a request class of its own."""
    from celery import Celery, Task
    from flask import Flask

    from flask_diaglog import DiagLog
    from flask_diaglog.workers import init_celery

    class OwnTask(Task):
        Request = "somewhere:OwnRequest"

    web = Flask(__name__)
    web.config["DIAGLOG_LOG_DIR"] = str(tmp_path)
    DiagLog(web)
    plain, own = Celery("plain", broker="memory://"), Celery("own", broker="memory://")
    own.Task = OwnTask
    for celery_app in (plain, own):
        init_celery(celery_app, web)
    assert plain.Task.Request == "flask_diaglog.workers.celery_request:DiagLogRequest"
    assert own.Task.Request == "somewhere:OwnRequest"


def test_an_own_request_class_not_derived_from_ours_is_warned_about(tmp_path: Path) -> None:
    """init_celery says, in the app's requests.log, when the app's own request class will cost
    the ids on Celery's lines; one derived from DiagLogRequest is not warned about."""
    from celery import Celery, Task
    from flask import Flask

    from flask_diaglog import DiagLog
    from flask_diaglog.workers import init_celery
    from flask_diaglog.workers.celery_request import DiagLogRequest

    class Derived(DiagLogRequest):  # type: ignore[misc]
        pass

    class OwnTask(Task):
        Request = "somewhere:OwnRequest"

    class DerivedTask(Task):
        Request = Derived

    web = Flask(__name__)
    web.config["DIAGLOG_LOG_DIR"] = str(tmp_path)
    DiagLog(web)
    for name, base in (("own", OwnTask), ("derived", DerivedTask)):
        celery_app = Celery(name, broker="memory://")
        celery_app.Task = base
        init_celery(celery_app, web)
    warned = [
        line
        for line in (tmp_path / "requests.log").read_text().splitlines()
        if "init_celery" in line
    ]
    assert len(warned) == 1 and "| WARNING |" in warned[0]
    assert "'somewhere:OwnRequest' stays" in warned[0] and "DiagLogRequest" in warned[0]


def test_a_task_with_its_own_request_class_not_derived_from_ours_is_warned_about(
    tmp_path: Path,
) -> None:
    """A task given a Request of its own (``@app.task(Request=...)``, a ``module.Name`` of an
    imported module, or a ``base=`` class with one) that is not derived from DiagLogRequest is
    named in a warning when Celery binds it; one derived from DiagLogRequest, and the tasks using
    the app's own, are not."""
    from celery import Celery
    from celery.worker.request import Request
    from flask import Flask

    from flask_diaglog import DiagLog
    from flask_diaglog.workers import init_celery
    from flask_diaglog.workers.celery_request import DiagLogRequest

    class PlainRequest(Request):  # type: ignore[misc]
        pass

    class Derived(DiagLogRequest):  # type: ignore[misc]
        pass

    web = Flask(__name__)
    web.config["DIAGLOG_LOG_DIR"] = str(tmp_path)
    DiagLog(web)
    celery_app = Celery("tasks_own_request", broker="memory://")
    init_celery(celery_app, web)

    class PlainBase(celery_app.Task):  # type: ignore[misc,name-defined]
        Request = PlainRequest

    @celery_app.task(name="own", Request=PlainRequest, lazy=False)
    def own() -> None: ...

    @celery_app.task(name="based", base=PlainBase, lazy=False)
    def based() -> None: ...

    @celery_app.task(name="dotted", Request="celery.worker.request.Request", lazy=False)
    def dotted() -> None: ...

    @celery_app.task(name="derived", Request=Derived, lazy=False)
    def derived() -> None: ...

    @celery_app.task(name="usual", lazy=False)
    def usual() -> None: ...

    # lazy=False: each task is made and bound now; finalize() would also make the shared tasks
    # other tests defined, in this app.
    for task in (own, based, dotted, derived, usual):
        task.bind(celery_app)  # as finalize() binds them again: still one warning each
    warned = [
        line
        for line in (tmp_path / "requests.log").read_text().splitlines()
        if "Celery task" in line
    ]
    assert len(warned) == 3 and all("| WARNING |" in line for line in warned)
    by_task = {line.split("Celery task ")[1].split(":")[0]: line for line in warned}
    assert set(by_task) == {"own", "based", "dotted"}
    assert "PlainRequest is not derived from" in by_task["own"]
    assert "PlainRequest is not derived from" in by_task["based"]
    assert "celery.worker.request.Request is not derived from" in by_task["dotted"]


def test_init_celery_after_the_app_was_finalized_says_what_it_costs(tmp_path: Path) -> None:
    """Celery's own tasks are made when the app is finalized: after that, init_celery cannot
    make them diaglog jobs, and says so (a chord's callback would get fresh ids); before it,
    nothing is said. In a fresh interpreter: finalizing here would also make, in that app, the
    shared tasks other tests defined."""
    script = f"""
from celery import Celery
from flask import Flask
from flask_diaglog import DiagLog
from flask_diaglog.workers import init_celery
web = Flask("w")
web.config["DIAGLOG_LOG_DIR"] = {str(tmp_path)!r}
DiagLog(web)
early, late = Celery("early", broker="memory://"), Celery("late", broker="memory://")
init_celery(early, web)
late.finalize(auto=True)
assert "celery.chord_unlock" in late.tasks
init_celery(late, web)
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    warned = [
        line
        for line in (tmp_path / "requests.log").read_text().splitlines()
        if "init_celery came after" in line
    ]
    assert len(warned) == 1 and "| WARNING |" in warned[0]
    assert "celery.chord_unlock" in warned[0]
