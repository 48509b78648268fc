"""(t) Celery tasks: the cost diaglog adds per task publish and per task run, against the same
task without diaglog.

Two Celery apps on the in-memory broker (``memory://``), the same task on each: one plain, one
connected with ``init_celery``. *Publish* is ``task.delay()`` from inside a request's trace
(diaglog adds the headers: ids, ``traceparent``); *run* is ``task.apply()`` through Celery's own
tracer (eager, in this process) with those headers (diaglog adds ``job_start`` and ``job_end``
lines, written to real files). One process, no broker round trip: what is measured is the work
of the publishing and the running process, which is where diaglog's cost is.

Two measures, as for requests:

* **instructions** under callgrind, the way :mod:`benchmarks.instructions` counts them: a fresh
  ``valgrind --tool=callgrind python -m benchmarks.tasks drive <variant> <log dir> <warmup> <n>``
  builds the apps, makes ``warmup`` then ``n`` operations; it runs for ``N1`` and ``N2``, and
  ``(Ir(N2) - Ir(N1)) / (N2 - N1)`` is the count per operation (start-up, imports and the
  warm-up cancel). ``PYTHONHASHSEED=0``; deterministic to a few parts in 10^5;
* **wall time**: medians of interleaved rounds, in microseconds per task (noisy on a shared
  machine; the instruction counts are the figure to compare).

``python -m benchmarks tasks`` prints both tables; without valgrind, only the time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ._common import interleave, median, spread, table

REPO = Path(__file__).resolve().parents[1]
#: variant: (operation, with diaglog)
VARIANTS: dict[str, tuple[str, bool]] = {
    "publish_bare": ("publish", False),
    "publish_diaglog": ("publish", True),
    "run_bare": ("run", False),
    "run_diaglog": ("run", True),
}


def _apps(tmp: str) -> dict[str, Any]:
    from celery import Celery
    from flask import Flask

    from flask_diaglog import DiagLog
    from flask_diaglog.context import Trace
    from flask_diaglog.workers import init_celery
    from flask_diaglog.workers.common import outgoing_headers

    flask_app = Flask("bench_tasks")
    flask_app.config.update(DIAGLOG_LOG_DIR=tmp, DIAGLOG_FORMAT="plain")
    DiagLog(flask_app)
    rec = flask_app.extensions["diaglog"].recorder

    bare = Celery("bench_bare", broker="memory://")
    diag = Celery("bench_diag", broker="memory://")
    init_celery(diag, flask_app)
    for app in (bare, diag):
        app.conf.update(task_ignore_result=True, broker_connection_retry=False)

    @bare.task(name="bench.add")
    def add_bare(a: int, b: int) -> int:
        return a + b

    @diag.task(name="bench.add")
    def add_diag(a: int, b: int) -> int:
        return a + b

    trace = Trace(rec, "request", "bench-request-1", "bench-job-1", "POST", "/bench")
    headers = outgoing_headers(trace, hand_off=False)
    return {"bare": add_bare, "diag": add_diag, "headers": headers, "trace": trace}


def operation(a: dict[str, Any], variant: str) -> Callable[[], Any]:
    """One task publish or run of ``variant``."""
    what, diaglog = VARIANTS[variant]
    task, headers = a["diag" if diaglog else "bare"], a["headers"]
    if what == "publish":
        return lambda: task.delay(1, 2)
    return lambda: task.apply((1, 2), headers=headers)


# -- instructions (callgrind) ------------------------------------------------------------------


def drive(variant: str, log_dir: str, warmup: int, n: int) -> int:
    """``warmup`` then ``n`` operations of ``variant`` inside a request's trace; each run must
    return 3. Returns the number of operations."""
    from flask_diaglog.context import reset_trace, set_trace

    a = _apps(log_dir)
    op = operation(a, variant)
    done = 0
    token = set_trace(a["trace"])  # the publishing side runs inside a request
    try:
        for _ in range(warmup + n):
            result = op()
            if VARIANTS[variant][0] == "run" and result.get() != 3:
                raise RuntimeError(f"{variant}: the task returned {result.get()!r}")
            done += 1
    finally:
        reset_trace(token)
    return done


def _callgrind(variant: str, n: int, warmup: int, run_dir: Path) -> int:
    """One run under callgrind; its total ``Ir``."""
    from .instructions import read_total

    log_dir, out = run_dir / "logs", run_dir / "callgrind.out"
    shutil.rmtree(run_dir, ignore_errors=True)
    log_dir.mkdir(parents=True)
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
        sys.executable, "-m", "benchmarks.tasks", "drive", variant, str(log_dir), str(warmup),
        str(n),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or proc.stdout.split() != ["ok", str(warmup + n)]:
        raise RuntimeError(
            f"{variant} N={n}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
        )
    return read_total(out)


def instructions(n1: int, n2: int, warmup: int, jobs: int = 2) -> dict[str, float]:
    """Instructions per operation of each variant: ``(Ir(N2) - Ir(N1)) / (N2 - N1)``."""
    root = Path(tempfile.mkdtemp(prefix="diaglog-tasks-ir-"))
    runs = [(v, n, root / v / str(n)) for v in VARIANTS for n in (n1, n2)]
    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            totals = list(pool.map(lambda r: _callgrind(r[0], r[1], warmup, r[2]), runs))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {v: (totals[2 * i + 1] - totals[2 * i]) / (n2 - n1) for i, v in enumerate(VARIANTS)}


def instructions_table(per: dict[str, float], n1: int, n2: int, warmup: int) -> str:
    rows = []
    for what in ("publish", "run"):
        b, d = per[f"{what}_bare"], per[f"{what}_diaglog"]
        rows.append(
            [
                f"task {what}",
                f"{b / 1000:.1f}",
                f"{d / 1000:.1f}",
                f"+{(d - b) / 1000:.1f} k (+{(d - b) / b * 100:.0f}%)",
            ]
        )
    head = ["per task (k instructions)", "Celery alone", "with diaglog", "overhead"]
    return (
        f"Instructions under callgrind: (Ir(N={n2}) - Ir(N={n1})) / {n2 - n1}, after {warmup} "
        "warm-up tasks; k = 1000 instructions\n\n" + table(head, rows)
    )


# -- wall time ---------------------------------------------------------------------------------


def _timer(fn: Callable[[], Any], n: int) -> Callable[[], float]:
    def once() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n * 1e6

    return once


def wall_time(n: int, rounds: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        from flask_diaglog.context import reset_trace, set_trace

        a = _apps(tmp)
        token = set_trace(a["trace"])  # the publishing side runs inside a request
        try:
            samples = interleave({v: _timer(operation(a, v), n) for v in VARIANTS}, rounds)
        finally:
            reset_trace(token)
    rows = []
    for what in ("publish", "run"):
        b, d = samples[f"{what}_bare"], samples[f"{what}_diaglog"]
        mb, md = median(b), median(d)
        rows.append(
            [
                f"task {what}",
                f"{mb:.1f} ({spread(b)})",
                f"{md:.1f} ({spread(d)})",
                f"+{md - mb:.1f} µs (+{(md - mb) / mb * 100:.0f}%)",
            ]
        )
    head = ["per task (µs, median)", "Celery alone", "with diaglog", "overhead"]
    return "Wall time, medians of interleaved rounds\n\n" + table(head, rows)


def run(quick: bool = False) -> str:
    n, rounds = (200, 5) if quick else (2000, 15)
    n1, n2, warmup = (20, 120, 20) if quick else (100, 600, 50)
    out = ["### Celery tasks (in-memory broker, one process)", ""]
    if shutil.which("valgrind") is None:
        out += ["(instructions: valgrind is not installed)", ""]
    else:
        out += [instructions_table(instructions(n1, n2, warmup), n1, n2, warmup), ""]
    out.append(wall_time(n, rounds))
    return "\n".join(out)


def _main(argv: Sequence[str]) -> int:
    variant, log_dir, warmup, n = argv
    print(f"ok {drive(variant, log_dir, int(warmup), int(n))}", flush=True)
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] != ["drive"]:
        sys.exit("usage: python -m benchmarks.tasks drive <variant> <log dir> <warmup> <n>")
    sys.exit(_main(args[1:]))
