"""The RQ side of the worker tests: a Flask app registered with ``init_rq``, imported by the
test process and by real ``rq worker -c workers_rq_app`` processes (configured by environment
variables: ``DIAGLOG_*``, ``WORKERS_RQ_URL``)."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from flask import Flask

from flask_diaglog import DiagLog, stage
from flask_diaglog.workers.rq import Worker, init_rq

#: Read by ``rq worker -c workers_rq_app``.
REDIS_URL = os.environ.get("WORKERS_RQ_URL", "redis://127.0.0.1:6379/2")

app = Flask(__name__)
app.config.update({"DIAGLOG_FORMAT": "json", "DIAGLOG_LOG_DIR": tempfile.mkdtemp()})
DiagLog(app)
init_rq(app)

log = logging.getLogger(__name__)


def render(n: int) -> int:
    with stage("render"):
        log.info("rendering %d", n)
    return n * 2


def boom() -> None:
    raise ValueError("bad input")


class ReadyWorker(Worker):
    """Tells the test fixture it is about to take jobs."""

    def work(self, *args: Any, **kwargs: Any) -> bool:
        ready = os.environ.get("WORKERS_READY")
        if ready:
            Path(ready).write_text(str(os.getpid()))
        return super().work(*args, **kwargs)
