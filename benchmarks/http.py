"""(c) Over HTTP: gunicorn -w 2 sync workers, wrk on loopback; worker CPU time per request.

Requests/s swing a lot between rounds on a shared machine; the CPU time the workers spend per
request does not, so that is the number to compare. CPU time is read from /proc (utime + stime
of the worker processes) before and after each wrk run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from ._common import interleave, median, spread, stop_process_group, table

REPO = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")

APPS = {
    "bare": (
        "bare Flask",
        """
        from flask import Flask
        app = Flask(__name__)

        @app.get("/")
        def index():
            return {"ok": True}
        """,
    ),
    "diaglog": (
        "DiagLog(app), default config",
        """
        from flask import Flask
        from flask_diaglog import DiagLog
        app = Flask(__name__)

        @app.get("/")
        def index():
            return {"ok": True}

        DiagLog(app)
        """,
    ),
    "floor": (
        "floor: same 2 lines + 2 headers, no features",
        """
        import os
        from benchmarks.floor import floor_app
        app = floor_app(os.path.join(os.environ["DIAGLOG_LOG_DIR"], "floor.log"))
        """,
    ),
    "handwritten": (
        "hand-written hooks + RotatingFileHandler",
        """
        import logging, logging.handlers, os, time, uuid
        from flask import Flask, g, request
        app = Flask(__name__)
        handler = logging.handlers.RotatingFileHandler(
            os.path.join(os.environ["DIAGLOG_LOG_DIR"], "hand.log"),
            maxBytes=10 * 1024 * 1024, backupCount=5)
        handler.setFormatter(logging.Formatter(
            "%(asctime)s | %(levelname)s | %(name)s | req=%(rid)s | %(message)s"))
        log = logging.getLogger("hand")
        log.propagate = False
        log.setLevel(logging.INFO)
        log.addHandler(handler)

        @app.before_request
        def start():
            g.rid = request.headers.get("X-Request-ID") or uuid.uuid4().hex
            g.t0 = time.perf_counter()
            log.info("request_start %s %s", request.method, request.path, extra={"rid": g.rid})

        @app.after_request
        def end(response):
            ms = (time.perf_counter() - g.t0) * 1000
            log.info("request_end %s %s %s %.2fms", request.method, request.path,
                     response.status_code, ms, extra={"rid": g.rid})
            response.headers["X-Request-ID"] = g.rid
            return response

        @app.get("/")
        def index():
            return {"ok": True}
        """,
    ),
    "log_request_id": (
        "flask-log-request-id (id only)",
        """
        import warnings
        warnings.simplefilter("ignore")
        from flask import Flask
        from flask_log_request_id import RequestID
        app = Flask(__name__)
        RequestID(app)

        @app.get("/")
        def index():
            return {"ok": True}
        """,
    ),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(p) for p in text.split()]
    except OSError:
        kids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(entry))
        return kids


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / TICK


@contextlib.contextmanager
def _server(module: str, directory: Path, log_dir: Path) -> Iterator[tuple[str, list[int]]]:
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(directory), str(REPO)]))
    env["DIAGLOG_LOG_DIR"] = str(log_dir)
    env.pop("TESTING", None)
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "gunicorn", f"{module}:app", "-w", "2", "-k", "sync"),
            *("-b", f"127.0.0.1:{port}", "--log-level", "warning", "--timeout", "60"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn for {module} did not start") from None
                time.sleep(0.1)
        workers: list[int] = []
        while len(workers) < 2 and time.monotonic() < deadline:
            workers = _children(proc.pid)
            time.sleep(0.05)
        yield url, workers
    finally:
        stop_process_group(proc)


def _wrk(url: str, seconds: int) -> tuple[int, float]:
    out = subprocess.run(
        ["wrk", "-t1", "-c4", f"-d{seconds}s", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if m is None:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    n = int(m.group(1))
    t = float(m.group(2)) / (1000 if m.group(3) == "ms" else 1)
    return n, n / t


def run(quick: bool = False) -> str:
    if shutil.which("wrk") is None:
        return "(c) skipped: wrk is not installed"
    seconds = 1 if quick else 3
    rounds = 3 if quick else 7
    rates: dict[str, list[float]] = {k: [] for k in APPS}
    with tempfile.TemporaryDirectory(prefix="diaglog-bench-") as d, contextlib.ExitStack() as st:
        tmp = Path(d)
        servers = {}
        for key, (_, code) in APPS.items():
            (tmp / f"bench_{key}.py").write_text(textwrap.dedent(code))
            (tmp / f"logs_{key}").mkdir()
            servers[key] = st.enter_context(_server(f"bench_{key}", tmp, tmp / f"logs_{key}"))

        def measure(key: str) -> Callable[[], float]:
            url, workers = servers[key]

            def once() -> float:
                before = _cpu_seconds(workers)
                n, rate = _wrk(url, seconds)
                after = _cpu_seconds(workers)
                rates[key].append(rate)
                return (after - before) / n * 1e6

            return once

        for key in APPS:  # warm up every worker once (imports, first requests)
            _wrk(servers[key][0], 1)
        samples = interleave({k: measure(k) for k in APPS}, rounds, warmup=0)
    base = median(samples["bare"])
    rows = []
    for key, (label, _) in APPS.items():
        m = median(samples[key])
        rows.append(
            [
                label,
                f"{m:.0f}",
                spread(samples[key]),
                f"{m / base:.2f}x",
                f"{median(rates[key]):.0f}",
                spread(rates[key]),
            ]
        )
    head = (
        f"(c) over HTTP: gunicorn -w 2 sync, wrk -t1 -c4 on loopback, {seconds} s per run; "
        f"median of {rounds} interleaved rounds"
    )
    return (
        head
        + "\n\n"
        + table(
            ["variant", "worker CPU µs/request", "spread", "vs bare", "requests/s", "spread"], rows
        )
    )
