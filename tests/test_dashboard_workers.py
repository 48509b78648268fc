"""The dashboard and ``flask diaglog summary`` over the files a web app and a real ``rq worker``
wrote to one log directory: an attempt that RQ runs again is *retried*, neither failed nor ok.

The web app enqueues two jobs with ``Retry(max=1)``: ``J-flaky`` fails its first attempt and
succeeds on the retry; ``J-boom`` fails both attempts, so only its last attempt is a failed job.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import workers_rq_app
from flask import Flask
from redis import Redis
from rq import Retry
from servers import (  # noqa: F401  (module_redis: the redis fixture)
    RedisServer,
    module_redis,
    serve_in_thread,
)
from workers_servers import run_worker, wait_for

from flask_diaglog import DiagLog, guard_job
from flask_diaglog.cli import diaglog_cli
from flask_diaglog.logread import read_records
from flask_diaglog.workers.rq import Queue, init_rq

pytestmark = pytest.mark.slow

FLAKY = "workers_rq_app.flaky"
BOOM = "workers_rq_app.boom"
RQ_WORKER = [
    sys.executable, "-m", "rq.cli", "worker", "-c", "workers_rq_app", "-w",
    "workers_rq_app.ReadyWorker",
]  # fmt: skip


def _job_ends(log_dir: Path) -> list[Any]:
    return [r for r in read_records(str(log_dir), ["jobs"]) if r.event == "job_end"]


@pytest.fixture(scope="module", params=["json", "plain"])
def site(
    request: pytest.FixtureRequest, redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Flask, Path]]:
    """A web app with the dashboard, and the log directory it shares with a real ``rq worker``
    (in the format of the param) that ran ``J-flaky`` and ``J-boom``, two attempts each."""
    fmt = request.param
    tmp = tmp_path_factory.mktemp(f"retried-{fmt}")
    log_dir = tmp / "logs"
    base = f"redis://127.0.0.1:{redis.port}"
    env = {"WORKERS_RQ_URL": f"{base}/2", "DIAGLOG_JOB_STORE": f"{base}/0", "DIAGLOG_FORMAT": fmt}
    app = Flask("retried", instance_path=str(tmp / "instance"))
    app.config.update(
        DIAGLOG_LOG_DIR=str(log_dir),
        DIAGLOG_FORMAT=fmt,
        DIAGLOG_DASHBOARD=True,
        DIAGLOG_JOB_STORE=env["DIAGLOG_JOB_STORE"],
    )
    DiagLog(app)
    conn = Redis.from_url(env["WORKERS_RQ_URL"])
    queue = Queue(connection=conn)

    @app.post("/run/<job_id>")
    @guard_job
    def run(job_id: str) -> Any:
        task = workers_rq_app.flaky if job_id == "J-flaky" else workers_rq_app.boom
        queue.enqueue(task, retry=Retry(max=1))
        return {"job_id": job_id}, 202

    init_rq(app)
    try:
        client = app.test_client()
        assert client.post("/run/J-flaky").status_code == 202
        assert client.post("/run/J-boom").status_code == 202
        with run_worker(RQ_WORKER, env, log_dir):
            wait_for(lambda: len(_job_ends(log_dir)) == 4, timeout=60)
        yield app, log_dir
    finally:
        init_rq(workers_rq_app.app)
        conn.close()


def _rows(app: Flask, job_id: str, *keys: str) -> list[dict[str, Any]]:
    """``keys`` of the rows of ``job_id``'s runs, oldest first."""
    r = app.test_client().get(f"/_diaglog/api/requests?kind=job&job_id={job_id}")
    assert r.status_code == 200
    rows = sorted(r.json["items"], key=lambda i: i["ts"])  # type: ignore[index]
    return [{k: i[k] for k in keys if k in i} for i in rows]


def test_the_line_rq_writes_after_a_failed_run_belongs_to_that_run(
    site: tuple[Flask, Path],
) -> None:
    """RQ's own ERROR line about a failed attempt, which its work horse writes after the run's
    ``job_end``, belongs to that run: it makes no row of its own (a run that seems to be still
    running), nor does it raise the next attempt's level."""
    app, _ = site
    flaky = _rows(app, "J-flaky", "name", "level", "duration_ms")
    assert [(r["name"], r["level"], "duration_ms" in r) for r in flaky] == [
        (FLAKY, "ERROR", True),
        (FLAKY, "INFO", True),
    ]
    boom = _rows(app, "J-boom", "name", "level", "duration_ms")
    assert [(r["name"], r["level"], "duration_ms" in r) for r in boom] == [
        (BOOM, "ERROR", True),
        (BOOM, "ERROR", True),
    ]


def test_the_api_says_which_attempt_was_retried(site: tuple[Flask, Path]) -> None:
    """A retried attempt's row has ``ok: false`` and ``retried: true`` with the error it was
    retried for; the attempt after it says ok or failed."""
    app, _ = site
    keys = ("ok", "retried", "error")
    retried = {"ok": False, "retried": True, "error": "ValueError: not yet"}
    assert _rows(app, "J-flaky", *keys) == [retried, {"ok": True}]
    boom = {"ok": False, "error": "ValueError: bad input"}
    assert _rows(app, "J-boom", *keys) == [{**boom, "retried": True}, boom]


_CELL = re.compile(r'<td class="status([^"]*)">([^<]*)</td>')


def _cells(html: bytes) -> list[tuple[str, str]]:
    """``(outcome class, text)`` of each status cell (the class ``""`` when there is none)."""
    return [((cls.split() or [""])[-1], text) for cls, text in _CELL.findall(html.decode())]


def test_the_pages_show_a_retried_attempt_as_retried(site: tuple[Flask, Path]) -> None:
    """The list and the job's page say ``retried`` for the attempt RQ ran again (not in the
    failed style), ``ok`` and ``failed`` for the last attempts."""
    app, _ = site
    client = app.test_client()
    listed = client.get("/_diaglog/requests?kind=job")
    assert sorted(_cells(listed.data)) == sorted(
        [("failed", "failed"), ("", "ok"), ("retried", "retried"), ("retried", "retried")]
    )
    for job_id, last in (("J-flaky", ("", "ok")), ("J-boom", ("failed", "failed"))):
        page = client.get(f"/_diaglog/trace/{job_id}")
        assert page.status_code == 200
        # the request's facts (202), its jobs table (two attempts), then each job's facts
        assert _cells(page.data)[1:] == [("retried", "retried"), last] * 2


def test_a_browser_shows_retried_neither_as_failed_nor_as_ok(
    site: tuple[Flask, Path], browser: Any
) -> None:
    """In Chromium, the job list's status cells say ``retried`` for the attempts RQ ran again,
    in another colour than the failed one's."""
    app, _ = site
    with serve_in_thread(app) as base:
        page = browser.new_page()
        page.goto(base + "/_diaglog/requests?kind=job")
        cells = page.locator("#items td.status")
        texts = sorted(t.strip() for t in cells.all_text_contents())
        assert texts == ["failed", "ok", "retried", "retried"]
        color = "el => getComputedStyle(el).color"
        retried = {c.evaluate(color) for c in page.locator("#items td.status.retried").all()}
        failed = page.locator("#items td.status.failed").evaluate(color)
        assert len(retried) == 1 and failed not in retried


def test_the_summary_counts_only_the_last_failed_attempt(site: tuple[Flask, Path]) -> None:
    """``flask diaglog summary`` counts one failed job (J-boom's last attempt) and says how
    many attempts were retried; the retried attempts are not among the failures."""
    _, log_dir = site
    runner = Flask(__name__).test_cli_runner()
    out = runner.invoke(diaglog_cli, ["summary", "--log-dir", str(log_dir), "--json"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output)
    assert summary["failed_jobs"] == 1 and summary["retried_jobs"] == 2
    assert [(f["job_id"], f["error"]) for f in summary["failed"]] == [
        ("J-boom", "ValueError: bad input")
    ]
    assert {name: summary["jobs"][name]["errors"] for name in (FLAKY, BOOM)} == {
        FLAKY: 0,
        BOOM: 1,
    }
    text = runner.invoke(diaglog_cli, ["summary", "--log-dir", str(log_dir)]).output
    assert "failed background jobs: 1\n" in text
