"""The hang watchdog and slow requests, observed in the log files diaglog really writes.

Timing: thresholds are small (0.1 s) and the sleeps several times longer; assertions use only
lower bounds the design guarantees (a report is never early) and bounded waits, never exact times.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Logs
from flask import Flask

from flask_diaglog import DiagLog, inflight, stage
from flask_diaglog.signals import diaglog_request_finished, hang_detected

HANG = 0.1  # DIAGLOG_HANG_AFTER in these tests
JSON_HANG = {"DIAGLOG_FORMAT": "json", "DIAGLOG_HANG_AFTER": HANG}
ROOT = Path(__file__).resolve().parent.parent


def wait_for(pred: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``pred`` until it is truthy or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


def render_frames() -> None:
    time.sleep(1.0)


def build_mesh_slowly() -> None:
    time.sleep(1.0)


def test_hung_request_names_stage_and_has_stack(make_app: Callable[..., Flask], logs: Logs) -> None:
    """A view sleeping inside a stage past the threshold gets a WARNING hang event: stage, stack."""
    app = make_app(JSON_HANG)

    @app.get("/render/<int:n>")
    def render(n: int) -> str:
        with stage("render"):
            render_frames()
        return "done"

    resp = app.test_client().get("/render/3", headers={"X-Job-ID": "job-7"})
    assert resp.status_code == 200
    hangs = logs.events("requests", "hang")
    assert hangs, logs.text("requests")
    first = hangs[0]
    assert first["level"] == "WARNING"
    assert first["stage"] == "render"
    assert first["method"] == "GET" and first["path"] == "/render/3"
    assert first["request_id"] == resp.headers["X-Request-ID"]
    assert first["job_id"] == "job-7"
    assert first["hung"] == 1
    assert first["duration_ms"] >= HANG * 1000
    assert first["logger"] == "flask_diaglog.watchdog"
    assert "in stage render" in first["msg"] and "GET /render/3" in first["msg"]
    assert first["thread"] == threading.current_thread().name  # the stuck thread, not the dog's
    assert "render_frames" in first["exc"] and "time.sleep(1.0)" in first["exc"]
    assert first["exc"].rstrip().endswith("time.sleep(1.0)")  # innermost frame last
    assert inflight(app) == []


def test_hang_of_a_request_that_wrote_no_line_names_the_urls_job_id(
    make_app: Callable[..., Flask], logs: Logs
) -> None:
    """The URL's job id is taken from the first line after the match; a request stuck before
    writing any gets it from the hang report, made in the watchdog's own thread."""
    app = make_app(JSON_HANG)

    @app.get("/jobs/<job_id>/render")
    def render(job_id: str) -> str:
        render_frames()
        return "done"

    app.test_client().get("/jobs/url-9/render")
    (first, *_) = logs.events("requests", "hang")
    assert first["job_id"] == "url-9"


def test_reports_repeat_at_doubling_intervals(make_app: Callable[..., Flask], logs: Logs) -> None:
    """Reports repeat (1, 2, 3 ...) no earlier than hang_after * 2**(n-1); the end line notes it."""
    app = make_app(JSON_HANG)

    @app.get("/slow")
    def slow() -> str:
        with stage("outer"), stage("inner"):
            render_frames()
        return "ok"

    app.test_client().get("/slow")
    hangs = logs.events("requests", "hang")
    assert len(hangs) >= 2, logs.text("requests")
    assert [h["hung"] for h in hangs] == list(range(1, len(hangs) + 1))
    for h in hangs:
        assert h["duration_ms"] >= HANG * 1000 * 2 ** (h["hung"] - 1)
        assert h["stage"] == "outer.inner"  # the innermost open stage
    (end,) = logs.events("requests", "request_end")
    # Doubling: work that ran D ms gets at most 1 + log2(D / hang_after) reports (4 for about 1 s:
    # 0.1, 0.2, 0.4, 0.8 s), where a fixed interval would give about 10.
    assert len(hangs) <= 1 + math.log2(end["duration_ms"] / (HANG * 1000))
    assert end["hung"] == len(hangs)
    assert f"was_hung({len(hangs)})" in end["msg"]
    assert end["level"] == "INFO"  # DIAGLOG_SLOW_MS (default 5000) not reached


def test_hung_spawned_job(make_app: Callable[..., Flask], logs: Logs) -> None:
    """Background work started with spawn() is watched too; its report goes to jobs.log."""
    app = make_app(JSON_HANG, init=False)
    diaglog = DiagLog(app)
    threads: list[threading.Thread] = []

    def generate() -> None:
        with stage("mesh"):
            build_mesh_slowly()

    @app.post("/generate")
    def start() -> tuple[str, int]:
        threads.append(diaglog.spawn(generate))
        return "accepted", 202

    resp = app.test_client().post("/generate", json={"job_id": "gen-1"})
    assert resp.status_code == 202
    threads[0].join(10)
    hangs = logs.events("jobs", "hang")
    assert hangs, logs.text("jobs")
    first = hangs[0]
    assert first["level"] == "WARNING"
    assert first["stage"] == "mesh"
    assert first["job_id"] == "gen-1"
    assert first["request_id"] == resp.headers["X-Request-ID"]
    assert first["name"].endswith("generate")
    assert first["thread"] == threads[0].name
    assert "build_mesh_slowly" in first["exc"]
    assert "job " in first["msg"] and "(from POST /generate)" in first["msg"]
    assert not logs.events("requests", "hang")  # the request itself ended at once
    (end,) = logs.events("jobs", "job_end")
    assert end["hung"] == len(hangs) and "was_hung(" in end["msg"]
    assert inflight(app) == []


def test_fast_work_gets_no_warning(make_app: Callable[..., Flask], logs: Logs) -> None:
    """Requests and jobs that end before the threshold are never reported."""
    app = make_app({"DIAGLOG_FORMAT": "json", "DIAGLOG_HANG_AFTER": 1.0}, init=False)
    diaglog = DiagLog(app)

    @app.get("/fast")
    def fast() -> str:
        with stage("quick"):
            time.sleep(0.01)
        diaglog.spawn(time.sleep, 0.01).join()
        return "ok"

    client = app.test_client()
    for _ in range(5):
        assert client.get("/fast").status_code == 200
    time.sleep(1.5)  # well past the threshold: a forgotten trace would be reported by now
    assert logs.events("requests", "hang") == []
    assert logs.events("jobs", "hang") == []
    assert all("hung" not in e for e in logs.events("requests", "request_end"))
    assert inflight(app) == []


def test_hang_after_zero_disables(make_app: Callable[..., Flask], logs: Logs) -> None:
    """DIAGLOG_HANG_AFTER=0 reports nothing; the registry still tracks the work."""
    app = make_app({"DIAGLOG_FORMAT": "json", "DIAGLOG_HANG_AFTER": 0})
    seen: list[list[dict[str, Any]]] = []

    @app.get("/slow")
    def slow() -> str:
        seen.append(inflight())
        time.sleep(0.3)
        return "ok"

    app.test_client().get("/slow")
    assert logs.events("requests", "hang") == []
    assert [e["path"] for e in seen[0]] == ["/slow"]


def test_plain_line_is_one_line_with_escaped_stack(
    make_app: Callable[..., Flask], logs: Logs
) -> None:
    """In the plain format a hang report is one WARNING line; the stack has escaped newlines."""
    app = make_app({"DIAGLOG_HANG_AFTER": HANG})

    @app.get("/slow")
    def slow() -> str:
        with stage("render"):
            time.sleep(0.5)
        return "ok"

    app.test_client().get("/slow")
    lines = [ln for ln in logs.lines("requests") if "| hang " in ln]
    assert lines, logs.text("requests")
    line = lines[0]
    assert " | WARNING | flask_diaglog.watchdog | req=" in line
    assert "hang GET /slow still running after " in line and "in stage render (report 1" in line
    assert "| Stack of thread " in line and "\\n  File " in line and "in slow\\n" in line
    assert "was_hung(" in logs.lines("requests")[-1]


def test_hang_signal_is_sent(make_app: Callable[..., Flask]) -> None:
    """The hang_detected signal carries the hang event (for the live view and user hooks)."""
    app = make_app({"DIAGLOG_HANG_AFTER": HANG})
    got: list[Any] = []

    def receiver(sender: Flask, event: Any) -> None:
        got.append((sender, event))

    hang_detected.connect(receiver, app)
    try:

        @app.get("/slow")
        def slow() -> str:
            time.sleep(0.4)
            return "ok"

        app.test_client().get("/slow")
    finally:
        hang_detected.disconnect(receiver, app)
    assert got
    sender, event = got[0]
    assert sender is app and event.kind == "hang" and event.fields["stage"] is None
    assert "outside any stage" in event.msg and "in slow" in event.exc


def test_slow_request_end_line_is_warning(make_app: Callable[..., Flask], logs: Logs) -> None:
    """DIAGLOG_SLOW_MS: a request at least that slow ends at WARNING with a slow note."""
    app = make_app({"DIAGLOG_FORMAT": "json", "DIAGLOG_SLOW_MS": 150, "DIAGLOG_HANG_AFTER": 0})

    @app.get("/<float:secs>")
    def sleepy(secs: float) -> str:
        time.sleep(secs)
        return "ok"

    client = app.test_client()
    client.get("/0.0")
    client.get("/0.3")
    fast, slow = logs.events("requests", "request_end")
    assert fast["level"] == "INFO" and "slow" not in fast["msg"]
    assert slow["level"] == "WARNING" and slow["msg"].endswith(" slow")
    assert slow["duration_ms"] >= 150
    assert logs.events("requests", "hang") == []


def test_inflight_sees_running_work_with_stack(make_app: Callable[..., Flask]) -> None:
    """inflight() lists a running request with its stage; stacks=True adds its Python stack."""
    app = make_app({"DIAGLOG_HANG_AFTER": 0})
    entered = threading.Event()
    release = threading.Event()

    def wait_in_view() -> None:
        entered.set()
        release.wait(10)

    @app.get("/busy")
    def busy() -> str:
        with stage("work"):
            wait_in_view()
        return "ok"

    def call() -> None:
        app.test_client().get("/busy", headers={"X-Request-ID": "busy-1"})

    t = threading.Thread(target=call)
    t.start()
    try:
        assert entered.wait(10)
        with app.app_context():
            (entry,) = inflight(stacks=True)
        assert entry["kind"] == "request" and entry["request_id"] == "busy-1"
        assert entry["method"] == "GET" and entry["path"] == "/busy"
        assert entry["stage"] == "work" and entry["thread"] == t.name
        assert entry["thread_id"] == t.ident and entry["pid"] == os.getpid()
        assert entry["elapsed_ms"] >= 0 and entry["hung"] == 0
        assert "wait_in_view" in entry["stack"]
        assert "stack" not in inflight(app)[0]
        # Outside an app context: every DiagLog app of the process.
        assert "busy-1" in [e["request_id"] for e in inflight()]
    finally:
        release.set()
        t.join(10)
    assert inflight(app) == []


def _run_script(tmp_path: Path, body: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIAGLOG_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-X", "dev", str(script), str(tmp_path / "logs")],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_lazy_start_and_clean_exit(tmp_path: Path) -> None:
    """No thread until work starts, idle when nothing runs; a job delaying exit is reported."""
    proc = _run_script(
        tmp_path,
        """
        import sys, threading, time
        from flask import Flask
        from flask_diaglog import DiagLog, stage, watchdog

        def names():
            return [t.name for t in threading.enumerate()]

        app = Flask("exitapp")
        app.config.update(DIAGLOG_LOG_DIR=sys.argv[1], DIAGLOG_HANG_AFTER=0.1)
        diaglog = DiagLog(app)

        def slow_cleanup():
            with stage("cleanup"):
                time.sleep(0.5)

        @app.get("/")
        def index():
            diaglog.spawn(slow_cleanup)  # not a daemon: interpreter exit waits for it
            return "ok"

        @app.get("/slow")
        def slow():
            time.sleep(0.3)
            return "ok"

        assert "diaglog-watchdog" not in names(), names()
        app.test_client().get("/slow")
        assert "diaglog-watchdog" in names(), names()

        # Idle: after two scans that find nothing in flight the watchdog waits without a timeout.
        deadline = time.monotonic() + 10
        while watchdog._watchdog.wake_at != float("inf") and time.monotonic() < deadline:
            time.sleep(0.02)
        scans = watchdog._watchdog.scans
        time.sleep(0.5)
        assert watchdog._watchdog.scans == scans, (scans, watchdog._watchdog.scans)

        app.test_client().get("/")
        print("main done")
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout == "main done\n"
    jobs = (tmp_path / "logs" / "jobs.log").read_text()
    assert "hang job slow_cleanup" in jobs and "in stage cleanup" in jobs
    assert "was_hung(" in jobs


def test_idle_watchdog_is_not_woken_by_new_requests(tmp_path: Path) -> None:
    """After a scan that finds nothing in flight (a gunicorn worker between requests) the
    watchdog sleeps one more hang period, so new requests need not wake it; a request that
    starts in that period and hangs is still reported. (A process of its own: the watchdog is
    per process, and other tests' work would share it.)"""
    proc = _run_script(
        tmp_path,
        """
        import json, sys, time
        from flask import Flask
        from flask_diaglog import DiagLog, watchdog

        app = Flask("idleapp")
        app.config.update(
            DIAGLOG_LOG_DIR=sys.argv[1], DIAGLOG_HANG_AFTER=1.0, DIAGLOG_FORMAT="json"
        )
        DiagLog(app)

        @app.get("/fast")
        def fast():
            return "ok"

        @app.get("/slow")
        def slow():
            time.sleep(1.4)
            return "ok"

        client = app.test_client()
        client.get("/fast")  # starts the watchdog; its deadline passes with nothing in flight
        deadline = time.monotonic() + 10
        while watchdog._watchdog.idle_scans == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert watchdog._watchdog.idle_scans == 1, watchdog._watchdog.idle_scans
        assert watchdog._watchdog.wake_at != float("inf")  # one more period, not forever

        scans = watchdog._watchdog.scans  # a wake-up (a poke) makes a scan
        for _ in range(50):
            assert client.get("/fast").status_code == 200
        assert watchdog._watchdog.scans == scans, (scans, watchdog._watchdog.scans)

        assert client.get("/slow").status_code == 200
        with open(sys.argv[1] + "/requests.log") as f:
            hangs = [e for e in map(json.loads, f) if e["event"] == "hang"]
        assert hangs and {h["path"] for h in hangs} == {"/slow"}, hangs
        print("ok")
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ok\n"


@pytest.mark.slow
def test_watchdog_restarts_in_forked_gunicorn_worker(tmp_path: Path, logs: Logs) -> None:
    """With --preload the watchdog first runs in the master; forked workers start their own."""
    from servers import gunicorn

    log_dir = tmp_path / "logs"
    (tmp_path / "hangapp.py").write_text(
        textwrap.dedent(
            f"""
            import os, threading, time
            from flask import Flask
            from flask_diaglog import DiagLog, stage

            app = Flask(__name__)
            app.config.update(
                DIAGLOG_LOG_DIR={str(log_dir)!r}, DIAGLOG_FORMAT="json", DIAGLOG_HANG_AFTER=0.2
            )
            DiagLog(app)

            def wait_for_backend():
                time.sleep(1.0)

            @app.get("/")
            def index():
                return str(os.getpid())

            @app.get("/hang")
            def hang():
                with stage("backend"):
                    wait_for_backend()
                return str(os.getpid())

            # Runs in the gunicorn master (--preload): its watchdog starts before the fork.
            app.test_client().get("/")
            running = any(t.name == "diaglog-watchdog" for t in threading.enumerate())
            with open({str(tmp_path / "master.txt")!r}, "w") as f:
                f.write(f"{{os.getpid()}} {{running}}")
            """
        )
    )
    env = {"GUNICORN_CMD_ARGS": "--preload"}
    with gunicorn("hangapp:app", workers=1, pythonpath=tmp_path, env=env) as base:
        worker_pid = int(urllib.request.urlopen(base + "/hang", timeout=30).read())
    master_pid, running = (tmp_path / "master.txt").read_text().split()
    assert running == "True"
    assert worker_pid != int(master_pid)
    hangs = [json.loads(ln) for ln in logs.lines("requests") if '"event":"hang"' in ln]
    assert hangs, logs.text("requests")
    assert all(h["pid"] == worker_pid for h in hangs)
    assert hangs[0]["stage"] == "backend" and "wait_for_backend" in hangs[0]["exc"]


def _order(logs: Logs, name: str) -> list[tuple[str, int | None]]:
    """``(event, hung)`` of the hang and end lines of ``name``.log, in the order written."""
    kinds = ("hang", "request_end", "job_end")
    return [(r["event"], r.get("hung")) for r in logs.json(name) if r["event"] in kinds]


def test_no_hang_line_after_the_end_line(make_app: Callable[..., Flask], logs: Logs) -> None:
    """Work that ends while the watchdog is about to report it gets no hang line after its end
    line. Made certain here: the report asks the app's job-id callable for the URL's job id (in
    the watchdog's thread, the request having written no line since its URL matched), and that
    call lets the view return and waits until the request's end line is out."""
    reporting, ended = threading.Event(), threading.Event()
    me = threading.current_thread()

    def job_id(req: Any) -> str:
        if threading.current_thread() is not me:  # the watchdog's report
            reporting.set()
            ended.wait(10)
        return "J1"

    app = make_app(JSON_HANG, job_id=job_id)

    @app.get("/jobs/<job_id>/export")
    def export(job_id: str) -> str:
        reporting.wait(10)  # past the threshold: the watchdog is reporting this request
        return "ok"

    def on_end(sender: Flask, event: Any) -> None:
        ended.set()

    with diaglog_request_finished.connected_to(on_end, app):
        app.test_client().get("/jobs/J1/export")
    assert reporting.is_set()
    # Without the fix: [("request_end", 1), ("hang", 1)], the report written after the end.
    assert _order(logs, "requests") == [("request_end", None)]


@pytest.mark.parametrize("kind", ["request", "job"])
def test_work_that_ends_during_its_hang_report_ends_after_it(
    make_app: Callable[..., Flask], logs: Logs, kind: str
) -> None:
    """Work that ends while its hang report is being sent (a hang_detected receiver lets it end,
    then takes a while): the hang line is first, and the end line counts it."""
    app = make_app(JSON_HANG, init=False)
    diaglog = DiagLog(app)
    reported = threading.Event()
    threads: list[threading.Thread] = []

    def on_hang(sender: Flask, event: Any) -> None:
        reported.set()
        time.sleep(0.3)  # the work ends meanwhile: its end line waits for the report

    def work() -> None:
        reported.wait(10)

    @app.get("/work")
    def view() -> str:
        if kind == "job":
            threads.append(diaglog.spawn(work))
        else:
            work()
        return "ok"

    with hang_detected.connected_to(on_hang, app):
        app.test_client().get("/work")
        for t in threads:
            t.join(10)
    assert reported.is_set()
    end = "job_end" if kind == "job" else "request_end"
    assert _order(logs, f"{kind}s") == [("hang", 1), (end, 1)]
    assert inflight(app) == []


class _DescribedLate(Exception):
    """An exception whose text, from its second reading on (the end line's traceback, written
    after the line's fields), waits for ``settle()``."""

    def __init__(self, settle: Callable[[], None]) -> None:
        super().__init__()
        self.settle = settle
        self.reads = 0

    def __str__(self) -> str:
        self.reads += 1
        if self.reads > 1:
            self.settle()
        return "boom"


def test_end_line_counts_a_report_written_while_it_is_built(
    make_app: Callable[..., Flask], logs: Logs
) -> None:
    """A hang report that could start while a job's end line is being built: either it is out
    before the line's count is taken and counted, or it never starts. Made certain here: the
    job fails at once, and its exception's text, read for the end line's traceback, waits
    until a hang report of the job is out or the job has left the in-flight list."""
    app = make_app(JSON_HANG, init=False)
    diaglog = DiagLog(app)
    reported = threading.Event()
    threads: list[threading.Thread] = []

    def settle() -> None:
        wait_for(lambda: reported.is_set() or all(e["kind"] != "job" for e in inflight(app)))

    def fail() -> None:
        raise _DescribedLate(settle)

    @app.post("/generate")
    def start() -> tuple[str, int]:
        threads.append(diaglog.spawn(fail))
        return "accepted", 202

    def on_hang(sender: Flask, event: Any) -> None:
        if event.target == "jobs":
            reported.set()

    with hang_detected.connected_to(on_hang, app):
        app.test_client().post("/generate", json={"job_id": "gen-1"})
        threads[0].join(10)
    (end,) = logs.events("jobs", "job_end")
    assert end["error"] == "_DescribedLate: boom"
    hangs = logs.events("jobs", "hang")
    # Without the fix: one hang line, and an end line without was_hung.
    assert end.get("hung", 0) == len(hangs)
    assert ("was_hung(" in end["msg"]) == bool(hangs)
    assert inflight(app) == []


def test_steady_traffic_wakes_the_watchdog_about_twice_a_period(tmp_path: Path) -> None:
    """Short requests with gaps between them (the watchdog's deadline always passes with nothing
    in flight): after two idle scans the watchdog sleeps without a timeout, and the request that
    wakes it then starts the count again, so the requests do not each wake it (a thread switch a
    request): its own deadline and that request, about two wake-ups a period."""
    proc = _run_script(
        tmp_path,
        """
        import sys, time
        from flask import Flask
        from flask_diaglog import DiagLog, watchdog

        app = Flask("steadyapp")
        app.config.update(DIAGLOG_LOG_DIR=sys.argv[1], DIAGLOG_HANG_AFTER=0.2)
        DiagLog(app)

        @app.get("/fast")
        def fast():
            return "ok"

        client = app.test_client()
        requests, end = 0, time.monotonic() + 2.0  # ten periods
        while time.monotonic() < end:
            assert client.get("/fast").status_code == 200
            requests += 1
            time.sleep(0.005)  # between requests: the watchdog may run
        scans = watchdog._watchdog.scans
        assert requests > 100, requests
        assert scans <= 25, (scans, requests)  # ten periods
        print("ok")
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ok\n"
