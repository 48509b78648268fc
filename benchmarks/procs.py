"""Many processes sharing one rotating file set: lines lost, duplicated or torn (larger version
of tests/test_multiprocess.py), for DiagLogHandler and the two stdlib-style handlers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

from ._common import table

REPO = Path(__file__).resolve().parents[1]

WRITER = textwrap.dedent(
    """
    import logging, logging.handlers, os, sys, time, warnings
    warnings.simplefilter("ignore")
    kind, path, proc, count, go = sys.argv[1:6]
    max_bytes, backups = 256 * 1024, 10_000
    if kind == "diaglog":
        from flask_diaglog import DiagLogHandler
        handler = DiagLogHandler(path, max_bytes=max_bytes, backup_count=backups)
    elif kind == "rotating":
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes,
                                                       backupCount=backups)
    else:
        from concurrent_log_handler import ConcurrentRotatingFileHandler
        handler = ConcurrentRotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups)
    if kind != "diaglog":
        handler.setFormatter(logging.Formatter("%(asctime)s | %(name)s | %(message)s"))
    log = logging.getLogger("mp")
    log.propagate = False
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    while not os.path.exists(go):
        time.sleep(0.001)
    for n in range(int(count)):
        log.info("p%s n%07d %s", proc, n, "x" * (int(proc) * 5))
    handler.close()
    """
)
LINE = re.compile(r".*\| mp \| (?:req=- job=- \| )?p(\d+) n(\d{7}) (x*)")
KINDS = {
    "diaglog": "DiagLogHandler",
    "rotating": "RotatingFileHandler",
    "concurrent": "ConcurrentRotatingFileHandler",
}


def _one(kind: str, tmp: Path, procs: int, count: int) -> list[str]:
    d = tmp / kind
    d.mkdir()
    go = d / "go"
    log = d / "app.log"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    errs = [d / f"stderr{p}" for p in range(procs)]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, kind, str(log), str(p), str(count), str(go)],
            env=env,
            stderr=errs[p].open("wb"),
        )
        for p in range(procs)
    ]
    time.sleep(0.5)
    t0 = time.perf_counter()
    go.touch()
    for c in children:
        c.wait()
    elapsed = time.perf_counter() - t0
    # RotatingFileHandler prints a "--- Logging error ---" traceback when a rename races.
    errors = sum(e.read_text(errors="replace").count("Logging error") for e in errs)
    seen: Counter[tuple[int, int]] = Counter()
    torn = 0
    files = 0
    for p in d.iterdir():
        if not p.name.startswith("app.log"):
            continue
        files += 1
        for line in p.read_text(errors="replace").splitlines():
            m = LINE.fullmatch(line)
            if m is None or len(m.group(3)) != int(m.group(1)) * 5:
                torn += 1
                continue
            seen[(int(m.group(1)), int(m.group(2)))] += 1
    total = procs * count
    lost = sum(1 for p in range(procs) for n in range(count) if (p, n) not in seen)
    dup = sum(v - 1 for v in seen.values() if v > 1)
    return [
        KINDS[kind],
        f"{total}",
        f"{lost} ({lost / total * 100:.1f}%)",
        str(dup),
        str(torn),
        str(files),
        str(errors),
        f"{total / elapsed / 1000:.0f} k",
    ]


def run(quick: bool = False) -> str:
    procs, count = (4, 10_000) if quick else (8, 50_000)
    rows = []
    with tempfile.TemporaryDirectory(prefix="diaglog-bench-") as d:
        for kind in KINDS:
            rows.append(_one(kind, Path(d), procs, count))
    head = (
        f"{procs} processes x {count} numbered lines into one file set, rotating at 256 KiB, "
        "backups enough to keep everything"
    )
    headers = ["handler", "lines", "lost", "duplicated", "torn", "files", "errors printed"]
    return head + "\n\n" + table([*headers, "lines/s"], rows)
