"""The example's Celery worker: the web app's own factory with the Celery runner.

    celery -A example_app.worker:celery_app worker --loglevel info --pool threads

Set the same ``DIAGLOG_JOB_STORE``, ``DIAGLOG_LIVE_QUEUE`` and ``EXAMPLE_BROKER_URL`` as the web
app; the worker's lines go to its own ``DIAGLOG_LOG_DIR``.
"""

from __future__ import annotations

from . import create_app
from .tasks import celery_app

#: The Flask app the tasks run in (app context, diaglog, job records).
app = create_app({"EXAMPLE_RUNNER": "celery"})

__all__ = ["app", "celery_app"]
