"""(b) Lines per second through the stdlib logging API into rotating files, in one process.

Every variant gets the same ``logger.info("...%d...", i)`` calls and rotates at 10 MiB with 5
backups. DiagLogHandler is the multi-process-safe writer; RotatingFileHandler is not
(see ``procs``); ConcurrentRotatingFileHandler is, through a lock file taken on every record.
"""

from __future__ import annotations

import logging
import logging.handlers
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from flask_diaglog import DiagLogHandler

from ._common import interleave, median, spread, table

MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 5
FORMAT = "%(asctime)s.%(msecs)03d | %(levelname)s | %(name)s | %(message)s"


def _stdlib(handler: logging.Handler) -> logging.Handler:
    handler.setFormatter(logging.Formatter(FORMAT, "%Y-%m-%d %H:%M:%S"))
    return handler


def make_handlers(tmp: Path) -> dict[str, tuple[str, logging.Handler]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from concurrent_log_handler import ConcurrentRotatingFileHandler

    return {
        "diaglog": (
            "DiagLogHandler (multi-process safe)",
            DiagLogHandler(str(tmp / "diaglog.log"), max_bytes=MAX_BYTES, backup_count=BACKUPS),
        ),
        "rotating": (
            "logging.handlers.RotatingFileHandler (not multi-process safe)",
            _stdlib(
                logging.handlers.RotatingFileHandler(
                    tmp / "rotating.log", maxBytes=MAX_BYTES, backupCount=BACKUPS
                )
            ),
        ),
        "concurrent": (
            "ConcurrentRotatingFileHandler (multi-process safe)",
            _stdlib(
                ConcurrentRotatingFileHandler(
                    str(tmp / "concurrent.log"), maxBytes=MAX_BYTES, backupCount=BACKUPS
                )
            ),
        ),
        "filehandler": (
            "logging.FileHandler (no rotation, reference)",
            _stdlib(logging.FileHandler(tmp / "file.log")),
        ),
    }


def run(quick: bool = False) -> str:
    n = 20_000 if quick else 50_000
    rounds = 5 if quick else 11
    with tempfile.TemporaryDirectory(prefix="diaglog-bench-") as d:
        handlers = make_handlers(Path(d))
        loggers = {}
        for key, (_, handler) in handlers.items():
            log = logging.getLogger(f"bench.lines.{key}")
            log.propagate = False
            log.setLevel(logging.INFO)
            log.handlers[:] = [handler]
            loggers[key] = log

        def timer(log: logging.Logger) -> Callable[[], float]:
            info = log.info

            def once() -> float:
                t0 = time.perf_counter()
                for i in range(n):
                    info("generated mesh %d of the batch in %s", i, "stage-a")
                return n / (time.perf_counter() - t0)

            return once

        samples = interleave({k: timer(lg) for k, lg in loggers.items()}, rounds)
        for _, handler in handlers.values():
            handler.close()
    rfh, crfh = median(samples["rotating"]), median(samples["concurrent"])
    rows = []
    for key, (label, _) in handlers.items():
        m = median(samples[key])
        vs = [f"{m / rfh:.2f}x", f"{m / crfh:.2f}x"]
        rows.append([label, f"{m / 1000:.0f} k", f"{1e6 / m:.2f}", spread(samples[key]), *vs])
    head = (
        f"(b) lines/s through logging.Logger.info, one process, rotating at 10 MiB: median of "
        f"{rounds} interleaved rounds of {n} lines"
    )
    return (
        head
        + "\n\n"
        + table(["handler", "lines/s", "µs/line", "spread", "vs Rotating", "vs Concurrent"], rows)
    )
