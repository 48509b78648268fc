"""Task queues: the request trail, the job guard's lease and the live stream follow work into
Celery and RQ workers.

* :mod:`.common`: the diaglog headers of a task message, the parent trace read back from them, a
  task run as a diaglog job, and a worker's startup checks (shared by both queues);
* :mod:`.lease`: the job guard's lease handed off into a task and held by the worker;
* :mod:`.celery`: ``init_celery(celery_app, app)``;
* :mod:`.rq`: ``init_rq(app)`` and the RQ ``Queue``/``Job``/``Worker`` classes.

Nothing here imports Celery or RQ until their function is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["init_celery", "init_rq"]


def init_celery(celery_app: Any, app: Flask) -> None:
    """Connect a Celery app to the diaglog of ``app``; see :func:`.celery.init_celery`."""
    from .celery import init_celery as init

    init(celery_app, app)


def init_rq(app: Flask) -> None:
    """Make RQ jobs of this process use the diaglog of ``app``; see :func:`.rq.init_rq`."""
    from .rq import init_rq as init

    init(app)
