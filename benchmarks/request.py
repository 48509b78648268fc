"""(a) Per request, Flask test client, trivial JSON view: DiagLog against bare Flask and peers."""

from __future__ import annotations

import logging
import logging.handlers
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask, g, request

from flask_diaglog import DiagLog, stage

from ._common import interleave, median, spread, table


def _app(name: str) -> Flask:
    app = Flask(name)

    @app.get("/")
    def index() -> dict[str, bool]:
        return {"ok": True}

    return app


def bare(tmp: Path) -> Flask:
    return _app("bare")


def diaglog(tmp: Path) -> Flask:
    app = _app("diaglog")
    app.config["DIAGLOG_LOG_DIR"] = str(tmp / "diaglog")
    DiagLog(app)
    return app


def diaglog_stage(tmp: Path) -> Flask:
    app = Flask("diaglog_stage")
    app.config["DIAGLOG_LOG_DIR"] = str(tmp / "diaglog_stage")

    @app.get("/")
    def index() -> dict[str, bool]:
        with stage("work"):
            pass
        return {"ok": True}

    DiagLog(app)
    return app


def diaglog_json(tmp: Path) -> Flask:
    """DiagLog(app) writing JSON lines (``DIAGLOG_FORMAT=json``)."""
    app = _app("diaglog_json")
    app.config["DIAGLOG_LOG_DIR"] = str(tmp / "diaglog_json")
    app.config["DIAGLOG_FORMAT"] = "json"
    DiagLog(app)
    return app


def diaglog_signal(tmp: Path) -> Flask:
    """DiagLog(app) + one no-op receiver on the ``request_end`` signal (one event per request)."""
    from flask_diaglog.signals import signal_for

    app = _app("diaglog_signal")
    app.config["DIAGLOG_LOG_DIR"] = str(tmp / "diaglog_signal")
    DiagLog(app)

    def receiver(sender: Flask, **kwargs: Any) -> None:
        pass

    signal_for("request_end").connect(receiver, app)
    # blinker holds receivers weakly: the app keeps this one alive (and it goes with the app)
    app.extensions["bench_signal_receiver"] = receiver
    return app


def floor(tmp: Path) -> Flask:
    from .floor import floor_app

    return floor_app(str(tmp / "floor.log"))


def floor_stage(tmp: Path) -> Flask:
    from .floor import floor_app

    return floor_app(str(tmp / "floor.log"), "floor_stage", stages=True)


def handwritten(tmp: Path) -> Flask:
    """What people write by hand: two hooks, two lines through RotatingFileHandler, an id."""
    app = _app("handwritten")
    (tmp / "hand").mkdir()
    handler = logging.handlers.RotatingFileHandler(
        tmp / "hand" / "requests.log", maxBytes=10 * 1024 * 1024, backupCount=5
    )
    handler.setFormatter(
        logging.Formatter("%(asctime)s | %(levelname)s | %(name)s | req=%(rid)s | %(message)s")
    )
    log = logging.getLogger("bench.handwritten")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)

    @app.before_request
    def start() -> None:
        g.rid = request.headers.get("X-Request-ID") or uuid.uuid4().hex
        g.t0 = time.perf_counter()
        log.info("request_start %s %s", request.method, request.path, extra={"rid": g.rid})

    @app.after_request
    def end(response: Any) -> Any:
        ms = (time.perf_counter() - g.t0) * 1000
        log.info(
            "request_end %s %s %s %.2fms",
            request.method,
            request.path,
            response.status_code,
            ms,
            extra={"rid": g.rid},
        )
        response.headers["X-Request-ID"] = g.rid
        return response

    return app


def log_request_id(tmp: Path) -> Flask:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from flask_log_request_id import RequestID

    app = _app("flask_log_request_id")
    RequestID(app)
    return app


VARIANTS: dict[str, tuple[str, Callable[[Path], Flask]]] = {
    "bare": ("bare Flask", bare),
    "diaglog": ("DiagLog(app), default config (2 lines, request id, Server-Timing)", diaglog),
    "diaglog_stage": ("DiagLog(app) + one timed stage (3 lines)", diaglog_stage),
    "floor": ("floor: the same 2 lines and 2 headers, no features (benchmarks/floor.py)", floor),
    "handwritten": (
        "hand-written before/after_request, 2 lines via RotatingFileHandler",
        handwritten,
    ),
    "log_request_id": ("flask-log-request-id (request id only, no line)", log_request_id),
}


def run(quick: bool = False) -> str:
    n = 1000 if quick else 2000
    rounds = 7 if quick else 15
    with tempfile.TemporaryDirectory(prefix="diaglog-bench-") as d:
        tmp = Path(d)
        clients = {key: make(tmp).test_client() for key, (_, make) in VARIANTS.items()}
        for c in clients.values():
            assert c.get("/").status_code == 200

        def timer(client: Any) -> Callable[[], float]:
            get = client.get

            def once() -> float:
                t0 = time.perf_counter()
                for _ in range(n):
                    get("/")
                return (time.perf_counter() - t0) / n * 1e6

            return once

        samples = interleave({k: timer(c) for k, c in clients.items()}, rounds)
    base = median(samples["bare"])
    rows = []
    for key, (label, _) in VARIANTS.items():
        m = median(samples[key])
        extra = "-" if key == "bare" else f"{m - base:+.1f} µs ({(m / base - 1) * 100:+.1f}%)"
        rows.append([label, f"{m:.1f}", spread(samples[key]), extra, f"{m / base:.3f}"])
    head = (
        f"(a) per request, Flask test client, trivial JSON view: median of {rounds} interleaved "
        f"rounds of {n} requests"
    )
    return (
        head
        + "\n\n"
        + table(["variant", "µs/request", "spread", "overhead vs bare", "ratio"], rows)
    )
