"""Nothing started is lost at shutdown: real servers stopped in the middle of a job.

Each test starts a real server process (``flask run``, gunicorn), starts a background job through
a request, sends the signal an operator sends (Ctrl-C is SIGINT, a process manager sends SIGTERM)
while the job runs, and then reads the log files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_until

from tests.servers import free_port

pytestmark = pytest.mark.slow

APP = textwrap.dedent(
    """
    import os
    import threading
    import time

    from flask import Flask

    from flask_diaglog import DiagLog, stage

    app = Flask(__name__)
    diaglog = DiagLog(app)


    def generate(seconds):
        with stage("render"):
            time.sleep(seconds)


    @app.post("/jobs/<job_id>")
    def start(job_id):
        t = diaglog.spawn(generate, float(__import__("flask").request.args["seconds"]))
        return {"daemon": t.daemon, "parent_daemon": threading.current_thread().daemon}, 202


    @app.get("/slow")
    def slow():
        with stage("render"):
            time.sleep(float(__import__("flask").request.args["seconds"]))
        return "done"


    class SlowToSend:
        # An outer WSGI layer that takes its time after the app answered (a compressing
        # middleware, a slow server): the response leaves after diaglog's end line.

        def __init__(self, wsgi_app):
            self.wsgi_app = wsgi_app

        def __call__(self, environ, start_response):
            body = self.wsgi_app(environ, start_response)
            if environ["PATH_INFO"] == "/slow-send":
                if "late" in environ["QUERY_STRING"]:  # 0.6 s after the test began the stop
                    marker = os.path.join(os.path.dirname(__file__), "stopping")
                    while not os.path.exists(marker):
                        time.sleep(0.01)
                    time.sleep(0.6)
                else:
                    time.sleep(0.5)
            return body


    app.wsgi_app = SlowToSend(app.wsgi_app)


    @app.get("/slow-send")
    def slow_send():
        time.sleep(float(__import__("flask").request.args["seconds"]))
        return "sent"
    """
)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "shutdown_app.py").write_text(APP)
    return tmp_path


def _env(app_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIAGLOG_", "FLASK_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(app_dir), str(Path(__file__).parent.parent)])
    env["DIAGLOG_LOG_DIR"] = str(app_dir / "logs")
    env["DIAGLOG_FORMAT"] = "json"
    env.update(extra)
    return env


def _post(url: str) -> dict[str, bool]:
    req = urllib.request.Request(url, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 202
        return json.loads(r.read())  # type: ignore[no-any-return]


def _ready(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
    except urllib.error.HTTPError as err:
        err.close()  # an answer, even an error, means the server is up; its socket is closed
        return True
    except OSError:
        return False
    return True


def _job_lines(app_dir: Path) -> list[dict[str, object]]:
    path = app_dir / "logs" / "jobs.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _request_lines(app_dir: Path) -> list[dict[str, object]]:
    path = app_dir / "logs" / "requests.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _get_in_background(url: str) -> list[object]:
    """GET ``url`` from another thread; the list gets the status, or the error."""
    got: list[object] = []

    def run() -> None:
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                got.append(r.status)
        except OSError as e:
            got.append(e)

    threading.Thread(target=run, daemon=True).start()
    return got


@pytest.fixture
def flask_run(app_dir: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(stdout: int = subprocess.DEVNULL, **env: str) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "shutdown_app", "run", "--port", str(port)],
            cwd=app_dir,
            env=_env(app_dir, **env),
            stdout=stdout,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _ready(base + "/"), "the server to answer", 20.0)
        return proc, base

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stopping_flask_run_waits_for_the_running_job(
    flask_run: object, app_dir: Path, sig: signal.Signals
) -> None:
    proc, base = flask_run()  # type: ignore[operator]
    threads = _post(base + "/jobs/j-wait?seconds=1.5")
    assert threads == {"daemon": False, "parent_daemon": True}  # non-daemon, from a daemon thread
    wait_until(
        lambda: any(r["event"] == "job_start" for r in _job_lines(app_dir)),
        "the job to start",
        20.0,
    )
    proc.send_signal(sig)
    proc.wait(30)
    (end,) = [r for r in _job_lines(app_dir) if r["event"] == "job_end"]
    assert end["ok"] is True and end["job_id"] == "j-wait"
    assert end["stages"] == {"render": pytest.approx(1500, abs=1000)}


def test_a_job_past_the_grace_period_ends_with_an_aborted_line(
    flask_run: object, app_dir: Path
) -> None:
    proc, base = flask_run(DIAGLOG_SHUTDOWN_GRACE="0.5")  # type: ignore[operator]
    _post(base + "/jobs/j-long?seconds=60")
    wait_until(
        lambda: any(r["event"] == "job_start" for r in _job_lines(app_dir)),
        "the job to start",
        20.0,
    )
    proc.send_signal(signal.SIGINT)
    assert proc.wait(20) == 1  # it did not wait the 60 s
    (end,) = [r for r in _job_lines(app_dir) if r["event"] == "job_end"]
    assert end["aborted"] is True and end["ok"] is False
    assert end["stage"] == "render" and end["job_id"] == "j-long"
    assert "in stage render" in str(end["error"])
    errors = (app_dir / "logs" / "errors.log").read_text()
    assert "j-long" in errors and "aborted" in errors


def _answer_while_stopping(
    flask_run: object,
    app_dir: Path,
    path: str,
    query: str,
    after: str = "request_start",
    **env: str,
) -> object:
    """What a GET of ``path`` answers when the server is sent SIGTERM while it serves it, once
    the request's ``after`` line is written (and the file ``stopping`` made, just before)."""
    proc, base = flask_run(**env)  # type: ignore[operator]
    got = _get_in_background(f"{base}{path}?{query}")
    wait_until(
        lambda: any(r["event"] == after and r.get("path") == path for r in _request_lines(app_dir)),
        f"the {after} line",
        20.0,
    )
    (app_dir / "stopping").touch()
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    wait_until(lambda: got, "the answer", 10.0)
    (answer,) = got
    return answer


def test_a_stopping_flask_run_waits_for_the_request_it_serves(
    flask_run: object, app_dir: Path
) -> None:
    """werkzeug serves each request in a daemon thread, which Python ends at exit without
    waiting: the request in flight is waited for, and answered, within the grace."""
    assert _answer_while_stopping(flask_run, app_dir, "/slow", "seconds=1.5") == 200
    (end,) = [
        r for r in _request_lines(app_dir) if r["event"] == "request_end" and r["path"] == "/slow"
    ]
    assert end["status"] == 200 and "aborted" not in end
    assert end["stages"] == {"render": pytest.approx(1500, abs=1000)}


def test_a_stopping_flask_run_lets_the_server_send_the_answer(
    flask_run: object, app_dir: Path
) -> None:
    """The request's end line is written when the app has answered, and the server sends the
    answer after it (here 0.5 s later, through an outer WSGI layer): a stopping process waits
    for the thread that serves it to send it too, not only for the end line."""
    assert _answer_while_stopping(flask_run, app_dir, "/slow-send", "seconds=1") == 200


@pytest.mark.parametrize("grace", ["25", "0.2"])
def test_a_stopping_flask_run_lets_an_answer_being_sent_go_out(
    flask_run: object, app_dir: Path, grace: str
) -> None:
    """The process begins to stop after the request's end line, while the server is still
    sending the answer (an outer WSGI layer sends it 0.6 s after the stop began): nothing of the
    request is in flight for diaglog any more, and its answer still goes out. Never past the
    grace: with a grace of 0.2 s it is cut off (RESPONSE_SETTLE, 1 s, would wait for it)."""
    query = "seconds=0&late"
    answer = _answer_while_stopping(
        flask_run, app_dir, "/slow-send", query, "request_end", DIAGLOG_SHUTDOWN_GRACE=grace
    )
    if grace == "0.2":
        assert isinstance(answer, OSError)  # the connection closed without an answer
    else:
        assert answer == 200


def test_a_request_past_the_grace_ends_with_an_aborted_line_on_file_and_console(
    flask_run: object, app_dir: Path
) -> None:
    """A request and a job still running after the grace get their aborted end lines, in the
    files and on the console (DIAGLOG_CONSOLE), before the process exits with status 1."""
    proc, base = flask_run(  # type: ignore[operator]
        stdout=subprocess.PIPE, DIAGLOG_SHUTDOWN_GRACE="0.5", DIAGLOG_CONSOLE="1"
    )
    _post(base + "/jobs/j-long?seconds=60")
    _get_in_background(base + "/slow?seconds=60")
    wait_until(
        lambda: any(r["event"] == "request_start" and r["path"] == "/slow"
                    for r in _request_lines(app_dir)),
        "the request to start",
        20.0,
    )  # fmt: skip
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)  # it did not wait the 60 s
    assert proc.returncode == 1
    (end,) = [
        r for r in _request_lines(app_dir) if r["event"] == "request_end" and r["path"] == "/slow"
    ]
    assert end["aborted"] is True and end["level"] == "WARNING" and "status" not in end
    console = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    ends = {
        (r["event"], r.get("path") or r.get("name")): r
        for r in console
        if r["event"].endswith("_end")
    }
    assert ends[("request_end", "/slow")]["aborted"] is True
    assert ends[("job_end", "generate")]["aborted"] is True


LATE = textwrap.dedent(
    """
    import threading
    import time

    from flask import Flask

    from flask_diaglog import DiagLog

    app = Flask(__name__)
    diaglog = DiagLog(app)
    started = threading.Event()


    def work():
        started.set()
        time.sleep(60)


    def start_a_job_as_the_process_stops():
        with app.app_context():
            diaglog.spawn(work)
        started.wait(10)


    # Registered after DiagLog was set up, so the interpreter calls it first as it stops: a job
    # that starts once stopping has begun, the moment no shutdown hook can be added any more.
    threading._register_atexit(start_a_job_as_the_process_stops)
    """
)


def test_a_job_started_as_the_process_stops_is_still_aborted_after_the_grace(
    tmp_path: Path,
) -> None:
    (tmp_path / "late_app.py").write_text(LATE)
    proc = subprocess.run(
        [sys.executable, "late_app.py"],
        cwd=tmp_path,
        env=_env(tmp_path, DIAGLOG_SHUTDOWN_GRACE="0.5"),
        capture_output=True,
        timeout=30,  # without the hook the process waits the job's 60 s
        check=False,
    )
    assert proc.returncode == 1, proc.stderr.decode()[-2000:]
    (end,) = [r for r in _job_lines(tmp_path) if r["event"] == "job_end"]
    assert end["aborted"] is True and end["ok"] is False and end["name"] == "work"


def test_a_gunicorn_worker_stopping_gracefully_waits_for_the_job(app_dir: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "shutdown_app:app",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--graceful-timeout",
            "20",
        ],
        cwd=app_dir,
        env=_env(app_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _ready(base + "/"), "the server to answer", 20.0)
        _post(base + "/jobs/j-guni?seconds=1.5")
        wait_until(
            lambda: any(r["event"] == "job_start" for r in _job_lines(app_dir)),
            "the job to start",
            20.0,
        )
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    (end,) = [r for r in _job_lines(app_dir) if r["event"] == "job_end"]
    assert end["ok"] is True and end["job_id"] == "j-guni"


def test_ctrl_c_on_the_example_apps_server_waits_for_the_generation(tmp_path: Path) -> None:
    """``make demo`` (``python -m example_app``): Ctrl-C during a generation lets it finish."""
    from tests.test_example_app import png
    from tests.test_example_stack import _multipart, _request

    port = free_port()
    env = _env(tmp_path)
    env["PYTHONPATH"] = str(Path(__file__).parent.parent)
    proc = subprocess.Popen(
        [sys.executable, "-m", "example_app", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _ready(base + "/healthz"), "the server to answer", 20.0)
        body, ctype = _multipart("image", "in.png", png(8, 6))
        job_id = _request(base + "/api/images", body, {"Content-Type": ctype})["job_id"]
        _request(
            base + f"/api/jobs/{job_id}/generate",
            b'{"resolution": 4}',
            {"Content-Type": "application/json"},
        )
        wait_until(
            lambda: any(r["event"] == "job_start" for r in _job_lines(tmp_path)),
            "the job to start",
            20.0,
        )
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    (end,) = [r for r in _job_lines(tmp_path) if r["event"] == "job_end"]
    assert end["ok"] is True and end["job_id"] == job_id
