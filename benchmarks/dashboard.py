"""(f) Dashboard pages on a 100 MB log set of 10 rotated files: how long each answer takes.

The set is generated in a temporary directory with the real renderer and message builders
(JSON lines: requests with stages, app warnings, errors, background jobs), spread over the last
two hours. The dashboard is served by the Flask test client. Reported:

* the first answer on the cold set (a refresh reads for at most 0.15 s, then the page answers
  with what is indexed so far and says how far it is), and how many polls and how much time it
  takes until everything is indexed;
* each page once the set is indexed (median of several calls; each call also checks for new
  bytes);
* a poll after 2 000 new requests were appended (only the new bytes are read);
* the trace of one job id that 1 000 to 16 000 requests carry (any client may put any id on its
  requests): the answer shows 20 of them whatever the number, and reads and groups only their
  lines, once (it used to match every line against every request: 4 s at 2 000, 78 s at
  10 000).
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from flask import Flask

from flask_diaglog.config import load_settings
from flask_diaglog.dashboard import create_blueprint
from flask_diaglog.files.render import json_line
from flask_diaglog.trail import (
    job_end_msg,
    job_start_msg,
    request_end_msg,
    request_start_msg,
    stage_msg,
)

from ._common import median, table

ROUTES = ["/api/orders/<int:id>", "/api/users/<int:id>", "/api/search", "/api/reports/<job_id>"]


def _request_lines(i: int, ts: float, rng: random.Random, job_id: str | None = None) -> list[bytes]:
    rid = f"{i:018x}"
    route = ROUTES[i % len(ROUTES)]
    path = route.replace("<int:id>", str(i % 997)).replace("<job_id>", f"job-{i}")
    job = job_id or (f"job-{i}" if "job" in route else None)
    load, query, render = rng.uniform(1, 20), rng.uniform(1, 80), rng.uniform(1, 15)
    total = load + render + rng.uniform(0.2, 3)
    status = 500 if i % 97 == 0 else 200
    fields = ("GET", path, route, status, round(total, 3), {"load": load, "load.query": query})
    out = [
        json_line(ts, 20, "request_start", "flask_diaglog.request", rid, job,
                  request_start_msg("GET", path, "10.0.0.7", None, "false"),
                  ("GET", path, None, "10.0.0.7", None, False), None, "worker-1"),
        json_line(ts + query / 1000, 20, "stage", "flask_diaglog.stage", rid, job,
                  stage_msg("load.query", query, True), ("load.query", query, True), None, "w"),
        json_line(ts + load / 1000, 20, "stage", "flask_diaglog.stage", rid, job,
                  stage_msg("load", load, True), ("load", load, True), None, "w"),
    ]  # fmt: skip
    if i % 5 == 0:
        out.append(
            json_line(ts + 0.002, 30, "log", "app.orders", rid, job,
                      f"order {i} took the slow path after {query:.1f} ms", None, None, "w")
        )  # fmt: skip
    out.append(
        json_line(ts + total / 1000, 40 if status >= 500 else 20, "request_end",
                  "flask_diaglog.request", rid, job,
                  request_end_msg("GET", path, status, total, route, fields[5]),
                  fields, None, "w")
    )  # fmt: skip
    return out


def _job_lines(i: int, ts: float) -> list[bytes]:
    rid, job, name = f"{i:018x}", f"job-{i}", "reports.build"
    ok = i % 50 != 0
    return [
        json_line(ts, 20, "job_start", "flask_diaglog.job", rid, job, job_start_msg(name),
                  {"name": name}, None, "j"),
        json_line(ts + 0.05, 20 if ok else 40, "job_end", "flask_diaglog.job", rid, job,
                  job_end_msg(name, ok, 50.0, error=None if ok else "RuntimeError: boom"),
                  {"name": name, "duration_ms": 50.0, "ok": ok,
                   "error": None if ok else "RuntimeError: boom"}, None, "j"),
    ]  # fmt: skip


def make_log_set(directory: Path, total_bytes: int, files: int = 10, start: int = 0) -> int:
    """Write ``files`` rotated ``requests.log`` files of ``total_bytes`` in all (and a jobs.log);
    returns how many requests were written."""
    rng = random.Random(7)
    per_file = total_bytes // files
    now = time.time()
    span = 2 * 3600.0
    requests_per_file = max(1, per_file // 1300)
    n_total = requests_per_file * files
    i = start
    with open(directory / "jobs.log", "ab") as jobs:
        for f in range(files):
            name = "requests.log" if f == files - 1 else f"requests.log.{files - 1 - f}"
            with open(directory / name, "ab") as out:
                written = 0
                while written < per_file:
                    ts = now - span + span * (i - start) / n_total
                    chunk = b"".join(_request_lines(i, ts, rng))
                    out.write(chunk)
                    written += len(chunk)
                    if i % 4 == 3:
                        jobs.write(b"".join(_job_lines(i, ts + 0.01)))
                    i += 1
    return i - start


def _app(log_dir: Path) -> Flask:
    app = Flask("bench_dashboard")
    app.config.update(DIAGLOG_LOG_DIR=str(log_dir), DIAGLOG_DASHBOARD=True, DIAGLOG_ENABLED=False)
    app.register_blueprint(create_blueprint(load_settings(app), dict, list))
    return app


def _timed(call: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    call()
    return (time.perf_counter() - t0) * 1000.0


def _flooded_trace(requests: int) -> tuple[float, float, int]:
    """Milliseconds for the trace API and page of one job id that ``requests`` requests carry,
    and the size of the API's answer in bytes."""
    rng = random.Random(11)
    with tempfile.TemporaryDirectory(prefix="diaglog-bench-flood-") as d:
        now = time.time() - 600.0
        with open(Path(d) / "requests.log", "wb") as out:
            for i in range(requests):
                out.write(b"".join(_request_lines(i, now + i * 0.01, rng, "victim-job-42")))
        client = _app(Path(d)).test_client()
        while not client.get("/_diaglog/api/state?limit=1").json["index"]["complete"]:  # type: ignore[index]
            pass
        t0 = time.perf_counter()
        answer = client.get("/_diaglog/api/trace/victim-job-42")
        api = (time.perf_counter() - t0) * 1000.0
        page = _timed(lambda: client.get("/_diaglog/trace/victim-job-42"))
        assert answer.json["more"] == requests - 20  # type: ignore[index]
        return api, page, len(answer.data)


def run(quick: bool = False) -> str:
    size = 100 * 1024 * 1024
    rounds = 5 if quick else 11
    with tempfile.TemporaryDirectory(prefix="diaglog-bench-dashboard-") as d:
        log_dir = Path(d)
        t0 = time.perf_counter()
        n = make_log_set(log_dir, size)
        made = time.perf_counter() - t0
        real = sum(os.path.getsize(p) for p in log_dir.glob("requests.log*"))
        client = _app(log_dir).test_client()

        def get(url: str) -> Callable[[], object]:
            def call() -> object:
                r = client.get(url)
                assert r.status_code == 200, (url, r.status_code)
                return r.data

            return call

        first = _timed(get("/_diaglog/"))
        polls, catch_up = 1, first
        while not client.get("/_diaglog/api/state?limit=1").json["index"]["complete"]:  # type: ignore[index]
            polls += 1
            catch_up += _timed(get("/_diaglog/api/inflight"))
        state = client.get("/_diaglog/api/state?limit=1").json
        rid = state["recent"][0]["request_id"]  # type: ignore[index]
        pages = {
            "overview `/`": "/_diaglog/",
            "list, first page `/requests`": "/_diaglog/requests",
            "list, filtered `?status=5xx&min_ms=10`": "/_diaglog/requests?status=5xx&min_ms=10",
            "list, search `?q=slow%20path`": "/_diaglog/requests?q=slow%20path",
            "list, last page": f"/_diaglog/requests?page={max(1, n // 50)}",
            "route page": "/_diaglog/route?route=GET%20/api/orders/%3Cint:id%3E",
            "trace page": f"/_diaglog/trace/{rid}",
            "API `/api/state`": "/_diaglog/api/state",
            "API `/api/requests?kind=job`": "/_diaglog/api/requests?kind=job",
        }
        rows = []
        for label, url in pages.items():
            samples = [_timed(get(url)) for _ in range(rounds)]
            rows.append([label, f"{median(samples):.0f} ms", f"{max(samples):.0f} ms"])
        more = make_log_set(log_dir, 2000 * 1300, files=1, start=n)
        after = _timed(get("/_diaglog/"))
        rows.append([f"overview after {more} new requests were appended", f"{after:.0f} ms", "-"])
    flood = []
    for requests in (1000, 4000) if quick else (1000, 4000, 16000):
        api, html, sent = _flooded_trace(requests)
        flood.append([f"{requests}", f"{api:.0f} ms", f"{html:.0f} ms", f"{sent / 1000:.0f} kB"])
    head = (
        f"(f) dashboard on {real / 1e6:.0f} MB in 10 rotated requests.log files ({n} requests, "
        f"JSON lines; generated in {made:.0f} s). First answer on the cold set: {first:.0f} ms; "
        f"fully indexed after {polls} polls, {catch_up / 1000:.1f} s of reading in all. "
        f"Then, median and max of {rounds} calls per page:"
    )
    tail = (
        "The trace of one job id that N requests carry (20 shown, the rest counted), one call each:"
    )
    return (
        head
        + "\n\n"
        + table(["page", "median", "max"], rows)
        + "\n\n"
        + tail
        + "\n\n"
        + table(["requests", "API", "page", "API answer"], flood)
    )
