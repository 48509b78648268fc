"""The example's generation as a Celery task, for ``EXAMPLE_RUNNER=celery``.

``make demo`` keeps the generation in a thread of the web process (no Redis). With
``EXAMPLE_RUNNER=celery`` the web app sends it to a Celery worker (``example_app/worker.py``)
through ``EXAMPLE_BROKER_URL``; diaglog carries the request and job ids, the job guard's lease
and the live events across (docs/workers.md). Both sides need ``DIAGLOG_JOB_STORE`` (the job
records and the leases) and ``DIAGLOG_LIVE_QUEUE`` (the live page) on the same Redis.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from flask import Flask, current_app

from flask_diaglog.workers import init_celery

from .pipeline import run_generation
from .store import open_store

#: The broker: ``EXAMPLE_BROKER_URL`` (app config or environment), default a local Redis, db 1.
DEFAULT_BROKER = "redis://127.0.0.1:6379/1"

celery_app = Celery("example_app", broker=os.environ.get("EXAMPLE_BROKER_URL", DEFAULT_BROKER))
celery_app.conf.update(
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
)


def init(app: Flask) -> None:
    """Connect the Celery app to ``app`` (its diaglog must be registered already)."""
    broker = app.config.get("EXAMPLE_BROKER_URL") or os.environ.get("EXAMPLE_BROKER_URL")
    if broker:
        celery_app.conf.broker_url = broker
    init_celery(celery_app, app)


@celery_app.task(name="example_app.generate")
def generate(job_id: str, options: dict[str, Any]) -> None:
    """One generation on the worker: the same pipeline, stages and progress as in-process."""
    store = open_store(current_app.config["DIAGLOG_JOB_STORE"])
    run_generation(store, job_id, options)
