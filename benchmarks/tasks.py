"""(t) Celery tasks: the cost diaglog adds per task publish and per task run, in one process.

Two Celery apps on the in-memory broker, the same task on each: one plain, one connected with
``init_celery``. *Publish* is ``task.delay()`` from inside a request's trace (diaglog adds the
headers: ids, ``traceparent``); *run* is ``task.apply()`` through Celery's own tracer with those
headers (diaglog adds ``job_start`` and ``job_end`` lines, written to real files). Medians of
interleaved rounds, in microseconds per task; wall time (the instruction counts of a request are in
``instructions``; a task's run is dominated by the same two lines).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from typing import Any

from ._common import interleave, median, spread, table


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


def _timer(fn: Callable[[], Any], n: int) -> Callable[[], float]:
    def once() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n * 1e6

    return once


def run(quick: bool = False) -> str:
    n, rounds = (200, 5) if quick else (2000, 15)
    with tempfile.TemporaryDirectory() as tmp:
        from flask_diaglog.context import reset_trace, set_trace

        a = _apps(tmp)
        bare, diag, headers = a["bare"], a["diag"], a["headers"]
        token = set_trace(a["trace"])  # the publishing side runs inside a request
        try:
            samples = interleave(
                {
                    "publish bare": _timer(lambda: bare.delay(1, 2), n),
                    "publish diaglog": _timer(lambda: diag.delay(1, 2), n),
                    "run bare": _timer(lambda: bare.apply((1, 2), headers=headers), n),
                    "run diaglog": _timer(lambda: diag.apply((1, 2), headers=headers), n),
                },
                rounds,
            )
        finally:
            reset_trace(token)
    rows = []
    for what in ("publish", "run"):
        b, d = samples[f"{what} bare"], samples[f"{what} diaglog"]
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
    return "### Celery tasks (in-memory broker, one process)\n\n" + table(head, rows)
