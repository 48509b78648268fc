"""Console output through a bounded queue: a stdout pipe that nobody reads never stalls requests."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from flask import Flask

from flask_diaglog import stage
from flask_diaglog.files.console import ConsoleSink
from flask_diaglog.files.render import plain_line

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

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
