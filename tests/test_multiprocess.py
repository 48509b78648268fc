"""Many processes sharing one rotating file set: no lost, duplicated or torn lines.

Real processes and real files: writer processes configured through ``logging.config.dictConfig``
with :class:`~flask_diaglog.DiagLogHandler`, and real gunicorn sync workers serving a view that
logs. Sized to run in seconds; ``python -m benchmarks procs`` runs the larger version.
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from servers import gunicorn

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

#: A writer process: waits for the start file, then writes numbered lines through stdlib logging.
WRITER = textwrap.dedent(
    """
    import logging, logging.config, os, sys, time
    path, proc, count, max_bytes, backups, go, compress = sys.argv[1:8]
    logging.config.dictConfig({
        "version": 1,
        "handlers": {"safe": {
            "()": "flask_diaglog.DiagLogHandler",
            "filename": path,
            "max_bytes": int(max_bytes),
            "backup_count": int(backups),
            "compress": compress == "1",
        }},
        "loggers": {"mp": {"handlers": ["safe"], "level": "INFO", "propagate": False}},
    })
    log = logging.getLogger("mp")
    while not os.path.exists(go):
        time.sleep(0.001)
    pad = "x" * (int(proc) * 7)  # lines of different lengths, so a torn one cannot look whole
    for n in range(int(count)):
        log.info("p%s n%06d %s", proc, n, pad)
    """
)

LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \| INFO \| mp \| req=- job=- \| p(\d+) n(\d{6}) (x*)"
)


def read_set(path: Path) -> list[str]:
    """Every line of ``path`` and its backups (plain or gzip), oldest file first."""
    files = []
    for p in path.parent.iterdir():
        rest = p.name[len(path.name) :] if p.name.startswith(path.name) else None
        if rest == "" or (rest and re.fullmatch(r"\.\d+(\.gz)?", rest)):
            files.append(p)

    def order(p: Path) -> int:
        rest = p.name[len(path.name) :]
        return -int(rest.split(".")[1]) if rest else 0

    lines: list[str] = []
    for p in sorted(files, key=order):
        data = gzip.decompress(p.read_bytes()) if p.name.endswith(".gz") else p.read_bytes()
        text = data.decode("utf-8")
        assert text == "" or text.endswith("\n"), f"{p.name} ends with a partial line"
        lines.extend(text.splitlines())
    return lines


def check_numbered(lines: list[str], procs: int, count: int) -> None:
    """Every process wrote every number exactly once, and every line is whole."""
    seen: Counter[tuple[int, int]] = Counter()
    for line in lines:
        m = LINE.fullmatch(line)
        assert m is not None, f"torn or foreign line: {line!r}"
        proc, n, pad = int(m.group(1)), int(m.group(2)), m.group(3)
        assert len(pad) == proc * 7, f"torn line: {line!r}"
        seen[(proc, n)] += 1
    dups = [k for k, v in seen.items() if v > 1]
    missing = [(p, n) for p in range(procs) for n in range(count) if (p, n) not in seen]
    assert not dups, f"{len(dups)} duplicated lines, e.g. {dups[:5]}"
    assert not missing, f"{len(missing)} lost lines, e.g. {missing[:5]}"
    assert len(lines) == procs * count


def run_writers(
    tmp_path: Path,
    procs: int,
    count: int,
    *,
    max_bytes: int,
    backups: int,
    compress: bool = False,
) -> Path:
    log = tmp_path / "logs" / "app.log"
    go = tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    children = [
        subprocess.Popen(
            [
                *(sys.executable, "-c", WRITER, str(log), str(p), str(count), str(max_bytes)),
                *(str(backups), str(go), "1" if compress else "0"),
            ],
            env=env,
            cwd=tmp_path,
        )
        for p in range(procs)
    ]
    time.sleep(0.3)  # let them import; the go file makes them start together
    go.touch()
    for child in children:
        assert child.wait(120) == 0
    return log


def test_eight_processes_rotating_lose_nothing(tmp_path: Path) -> None:
    """8 processes x 20 000 lines, rotating at 256 KiB: no line lost, duplicated or torn."""
    procs, count = 8, 20_000
    log = run_writers(tmp_path, procs, count, max_bytes=256 * 1024, backups=500)
    backups = [p for p in log.parent.iterdir() if p.name.startswith("app.log.")]
    assert len(backups) >= 20, "the run must rotate many times"
    # Each process checks the size every max_bytes/64 bytes: the overshoot stays small.
    assert max(p.stat().st_size for p in backups) < 256 * 1024 * 1.5
    check_numbered(read_set(log), procs, count)


def test_processes_with_compression_lose_nothing(tmp_path: Path) -> None:
    """4 processes rotating with gzip on: every line is in exactly one plain or .gz backup."""
    procs, count = 4, 10_000
    log = run_writers(tmp_path, procs, count, max_bytes=64 * 1024, backups=500, compress=True)
    names = [p.name for p in log.parent.iterdir()]
    assert any(n.endswith(".gz") for n in names), names
    assert not any(n.endswith(".part") for n in names if not n.startswith(".")), names
    check_numbered(read_set(log), procs, count)


def test_backup_count_keeps_the_newest(tmp_path: Path) -> None:
    """With few backups, the files kept hold exactly the newest lines, each once."""
    log = run_writers(tmp_path, 2, 5_000, max_bytes=16 * 1024, backups=3)
    names = sorted(p.name for p in log.parent.iterdir() if not p.name.startswith("."))
    assert names == ["app.log", "app.log.1", "app.log.2", "app.log.3"]
    lines = read_set(log)
    assert all(LINE.fullmatch(line) for line in lines)
    last = {}
    for line in lines:
        m = LINE.fullmatch(line)
        assert m is not None
        last.setdefault(int(m.group(1)), []).append(int(m.group(2)))
    for nums in last.values():
        assert len(nums) == len(set(nums))
        # What survives of each process is its newest lines, in order, without gaps.
        assert nums == list(range(nums[0], 5_000)), "a line inside the kept range was lost"


APP = textwrap.dedent(
    """
    import os
    from flask import Flask
    from flask.logging import default_handler
    from flask_diaglog import DiagLog

    app = Flask(__name__)
    # Flask's own handler writes every record to stderr synchronously; the test harness reads
    # gunicorn's stderr only at the end, so a full pipe would stall the workers.
    app.logger.removeHandler(default_handler)

    @app.get("/")
    def index():
        return {"ok": True}

    @app.get("/work/<int:n>")
    def work(n):
        app.logger.info("work n=%d pid=%d", n, os.getpid())
        return {"n": n, "pid": os.getpid()}

    DiagLog(app)
    """
)


def test_gunicorn_workers_share_one_file_set(tmp_path: Path) -> None:
    """Real gunicorn -w 4 sync workers rotating requests.log: every request has its 3 lines."""
    (tmp_path / "mpapp.py").write_text(APP)
    log_dir = tmp_path / "logs"
    env = {
        "DIAGLOG_LOG_DIR": str(log_dir),
        "DIAGLOG_MAX_BYTES": str(32 * 1024),
        "DIAGLOG_BACKUP_COUNT": "1000",
        "PYTHONPATH": str(REPO),
    }
    total = 1500

    with gunicorn("mpapp:app", workers=4, env=env, pythonpath=tmp_path) as base:

        def get(n: int) -> int:
            req = urllib.request.Request(f"{base}/work/{n}", headers={"X-Request-ID": f"r{n}"})
            with urllib.request.urlopen(req, timeout=30) as resp:
                assert resp.headers["X-Request-ID"] == f"r{n}"
                return int(resp.status)

        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(get, range(total)))
    assert statuses == [200] * total

    lines = read_set(log_dir / "requests.log")
    assert sum(1 for p in log_dir.iterdir() if p.name.startswith("requests.log.")) >= 5
    per_request: Counter[str] = Counter()
    kinds: Counter[tuple[str, str]] = Counter()
    pids = set()
    for line in lines:
        m = re.fullmatch(r"\S+ \S+ \| (\w+) \| (\S+) \| req=(\S+) job=- \| (\S+) (.*)", line)
        assert m is not None, f"torn line: {line!r}"
        rid, first, rest = m.group(3), m.group(4), m.group(5)
        if not rid.startswith("r"):
            continue  # gunicorn's readiness probe
        per_request[rid] += 1
        kinds[(rid, first)] += 1
        if first == "work":
            pids.add(rest.rsplit("pid=", 1)[1])
    assert len(pids) >= 2, "the requests should be spread over several workers"
    for n in range(total):
        rid = f"r{n}"
        assert per_request[rid] == 3, (rid, per_request[rid])
        assert kinds[(rid, "request_start")] == 1
        assert kinds[(rid, "work")] == 1
        assert kinds[(rid, "request_end")] == 1
