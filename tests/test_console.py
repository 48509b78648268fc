"""Console output through a bounded queue: a stdout pipe that nobody reads never stalls requests."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from servers import free_port

from flask_diaglog import stage
from flask_diaglog.files.console import ConsoleSink
from flask_diaglog.files.render import plain_line

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
#: The flat-layout app (app.py beside helpers.py) that ``flask run`` serves in these tests.
FLAT = Path(__file__).resolve().parent / "apps" / "flat"


@contextlib.contextmanager
def flask_run(log_dir: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``flask --app app run`` in the flat app's directory, stdout and stderr both pipes that
    this helper never reads; yields the base URL and the process (the test may read the pipes
    after :func:`stop`)."""
    port = free_port()
    full = dict(os.environ, PYTHONPATH=str(REPO), DIAGLOG_LOG_DIR=str(log_dir), **env)
    full.pop("TESTING", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "app", "run", "--port", str(port)],
        cwd=FLAT,
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, "flask run exited"
            try:
                urllib.request.urlopen(f"{base}/info?n=ready", timeout=5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "flask run did not serve in time"
                time.sleep(0.1)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def stop(proc: subprocess.Popen[bytes]) -> tuple[str, str]:
    """Ctrl-C the server (so it exits normally) and return what it printed."""
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return out.decode(), err.decode()


def get(url: str, request_id: str | None = None) -> int:
    headers = {"X-Request-ID": request_id} if request_id else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
        return int(r.status)


CHILD = textwrap.dedent(
    """
    import json, logging, sys
    from flask import Flask
    from flask_diaglog import DiagLog, stage, stats

    log_dir, result = sys.argv[1], sys.argv[2]
    app = Flask("pipeapp")
    app.config.update(DIAGLOG_LOG_DIR=log_dir, DIAGLOG_CONSOLE=True, DIAGLOG_MAX_BYTES=0)
    log = logging.getLogger("pipeapp")

    @app.get("/n/<int:n>")
    def view(n):
        with stage("work"):
            log.info("in view %d", n)
        return {"n": n}

    DiagLog(app)
    client = app.test_client()
    statuses = [client.get(f"/n/{n}", headers={"X-Request-ID": f"r{n}"}).status_code
                for n in range(5000)]
    with open(result, "w") as f:
        json.dump({"statuses": statuses, "stats": stats(app)}, f)
    """
)


def test_unread_stdout_pipe_never_stalls_requests(tmp_path: Path) -> None:
    """5 000 requests complete with stdout a full pipe nobody reads; drops are counted."""
    log_dir, result, err = tmp_path / "logs", tmp_path / "result.json", tmp_path / "stderr.txt"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("TESTING", None)
    with err.open("wb") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(log_dir), str(result)],
            env=env,
            stdout=subprocess.PIPE,  # never read
            stderr=stderr,
        )
        try:
            # A bounded wait, not a timing assertion: a stalled child would sit here forever.
            child.wait(timeout=120)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            assert child.stdout is not None
            child.stdout.close()
    assert child.returncode == 0, err.read_text()
    data = json.loads(result.read_text())
    assert data["statuses"] == [200] * 5000
    # 4 lines per request (start, stage, app line, end) = 20 000 lines; the pipe holds ~64 KiB and
    # the queue 10 000 lines, so thousands were dropped, counted, and reported once on stderr.
    assert data["stats"]["console_dropped"] > 5000
    assert data["stats"]["failed_writes"] == 0
    assert err.read_text().count("console (stdout) is not being read") == 1

    text = (log_dir / "requests.log").read_text()
    for kind in ("request_start", "request_end"):
        rids = re.findall(rf"req=r(\d+) job=- \| {kind} ", text)
        assert sorted(map(int, rids)) == list(range(5000)), kind
    assert len(re.findall(r"\| in view \d+$", text, re.M)) == 5000
    assert len(re.findall(r"\| stage work ", text)) == 5000


def test_console_echoes_lines_and_reports_drops_after_draining(tmp_path: Path) -> None:
    """Lines reach the stream; after drops, the console says how many once it drains again."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    try:
        with os.fdopen(os.dup(w), "w") as stream:
            sink = ConsoleSink(plain_line, stream=stream, maxsize=4)
            for n in range(3):
                sink.put(f"line {n}\n".encode())
            assert sink.flush(10)
            assert os.read(r, 65536) == b"line 0\nline 1\nline 2\n"
            # Fill the pipe so the writer thread blocks, then overflow the queue.
            chunk = b"x" * 65536
            filled = 0
            os.set_blocking(w, False)
            try:
                while True:
                    filled += os.write(w, chunk)
            except BlockingIOError:
                pass
            finally:
                os.set_blocking(w, True)
            for n in range(20):
                sink.put(f"late {n}\n".encode())
            assert sink.dropped >= 15
            dropped = sink.dropped
            # Drain the pipe: the writer wakes up and reports the drops. Keep reading until the
            # sink has written everything it queued, then take what is left.
            got = b""
            for _ in range(2000):
                try:
                    got += os.read(r, 1 << 20)
                    continue
                except BlockingIOError:
                    pass
                if sink.flush(0.05):
                    with contextlib.suppress(BlockingIOError):
                        got += os.read(r, 1 << 20)
                    break
            else:
                pytest.fail("the console sink never drained")
            tail = got[filled:].decode()
            reported = re.findall(r"flask-diaglog: (\d+) console lines were dropped\n", tail)
            assert sum(map(int, reported)) == dropped
            assert tail.count("late ") == 20 - dropped
    finally:
        os.close(r)
        os.close(w)


def test_console_config_echoes_every_line(
    make_app: object, capfd: pytest.CaptureFixture[str]
) -> None:
    """DIAGLOG_CONSOLE=True echoes the file lines to stdout through the console sink."""
    app: Flask = make_app({"DIAGLOG_CONSOLE": True})  # type: ignore[operator]

    @app.get("/")
    def index() -> dict[str, bool]:
        with stage("s"):
            pass
        return {"ok": True}

    app.test_client().get("/", headers={"X-Request-ID": "c1"})
    out = ""
    deadline = time.monotonic() + 10  # the console thread writes after the request returned
    while out.count("req=c1") < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
        out += capfd.readouterr().out
    missing = [k for k in ("request_start", "stage s", "request_end") if k not in out]
    assert missing == []
    assert out.count("req=c1") == 3


@pytest.mark.parametrize("console", ["true", "false"], ids=["console", "no-console"])
def test_unread_stdout_and_stderr_never_stall_a_real_server(tmp_path: Path, console: str) -> None:
    """``flask run`` with stdout and stderr both pipes nobody reads: 5 000 requests, each logging
    through app.logger (and a helper module), all complete; the files hold every line."""
    log_dir = tmp_path / "logs"
    with flask_run(log_dir, DIAGLOG_CONSOLE=console) as (base, _proc):
        start = time.monotonic()
        statuses = [get(f"{base}/hello?n={n}&token=s3cret") for n in range(5000)]
        elapsed = time.monotonic() - start
    assert statuses == [200] * 5000
    assert elapsed < 60  # the generous bound of the issue: a stall would take forever
    text = (log_dir / "requests.log").read_text()
    app_lines = re.findall(r"\| WARNING \| app \| req=\S+ job=- \| app line (\d+) ", text)
    assert sorted(map(int, app_lines)) == list(range(5000))
    helper_lines = re.findall(
        r"\| INFO \| helpers \| req=\S+ job=- \| helper info (\d+)$", text, re.M
    )
    assert sorted(map(int, helper_lines)) == list(range(5000))
    assert "s3cret" not in text


def test_with_console_each_record_is_printed_once_and_masked(tmp_path: Path) -> None:
    """DIAGLOG_CONSOLE: every record once, on stdout, redacted; nothing of the app on stderr;
    werkzeug's access line is replaced by diaglog's request lines."""
    with flask_run(tmp_path / "logs", DIAGLOG_CONSOLE="true") as (base, proc):
        assert get(f"{base}/hello?n=once&token=s3cret", "once") == 200
        out, err = stop(proc)
    assert out.count("req=once job=- | app line once token=[REDACTED]") == 1
    assert out.count("req=once job=- | helper info once") == 1
    assert out.count("req=once job=- | request_start GET /hello?n=once&token=[REDACTED]") == 1
    assert out.count("req=once job=- | request_end GET /hello 200 ") == 1
    assert "app line" not in err
    assert '"GET /hello' not in out + err  # werkzeug's access line
    assert "s3cret" not in out + err


def test_without_console_stderr_prints_what_flask_and_werkzeug_print_masked(
    tmp_path: Path,
) -> None:
    """Console off: Flask's and werkzeug's lines are on stderr as without diaglog, once each,
    with secrets masked; INFO records nobody printed before stay unprinted."""
    with flask_run(tmp_path / "logs", DIAGLOG_CONSOLE="false") as (base, proc):
        assert get(f"{base}/hello?n=once&token=s3cret", "once") == 200
        out, err = stop(proc)
    assert err.count("] WARNING in app: app line once token=[REDACTED]\n") == 1
    assert err.count('"GET /hello?n=once&token=[REDACTED] HTTP/1.1" 200 -\n') == 1
    assert "helper info" not in out + err
    assert "flask_diaglog" not in out
    assert "s3cret" not in out + err


def test_console_threads_end_when_the_app_is_discarded(
    make_app: Callable[..., Flask], capfd: pytest.CaptureFixture[str]
) -> None:
    """The console's and the stand-ins' writer threads stop once their app is garbage-collected."""
    gc.collect()
    before = set(threading.enumerate())
    app = make_app({"DIAGLOG_CONSOLE": True, "DIAGLOG_LOGGERS": "tests.discard"})
    app.test_client().get("/")
    logging.getLogger("tests.discard").warning("to the console")  # to stdout
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.propagate = False  # away from pytest's handlers: the werkzeug stand-in prints it
    try:
        werkzeug.warning("to stderr")
    finally:
        werkzeug.propagate = True
    started = [t for t in set(threading.enumerate()) - before if t.name.startswith("diaglog-std")]
    assert sorted(t.name for t in started) == ["diaglog-stderr", "diaglog-stdout"]
    del app
    gc.collect()
    for t in started:
        t.join(10)
    assert [t.name for t in started if t.is_alive()] == []
    out, err = capfd.readouterr()
    assert "to the console" in out and "to stderr" in err


def test_console_leaves_out_records_the_apps_own_handler_prints(
    make_app: Callable[..., Flask], capfd: pytest.CaptureFixture[str]
) -> None:
    """A record that a handler of the app's own prints to stderr is not echoed again on stdout;
    a record nobody else prints is."""
    app = make_app({"DIAGLOG_CONSOLE": True})
    own = logging.getLogger("tests.own_console")
    own.addHandler(logging.StreamHandler(sys.stderr))
    other = logging.getLogger("tests.no_handler")

    @app.get("/")
    def index() -> str:
        own.warning("printed by the app")
        other.info("printed by the console")
        return "ok"

    app.test_client().get("/", headers={"X-Request-ID": "dup"})
    state = app.extensions["diaglog"]
    assert state.console is not None and state.console.flush(10)
    out, err = capfd.readouterr()
    assert err.count("printed by the app") == 1
    assert "printed by the app" not in out
    assert out.count("req=dup job=- | printed by the console") == 1
