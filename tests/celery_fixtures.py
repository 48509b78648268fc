"""The fixtures of the Celery test modules, imported by each: ``redis``, a Redis of the module
(:func:`servers.module_redis`: the broker, db 1, and the job store, db 0); ``env``, its
environment for the worker; and ``broker`` (autouse), the test Celery app pointed at that
broker. Module-scoped, so each importing module gets its own Redis and no module sends its
tasks to another's. And :func:`guarded_sender`, a guarded view that sends a task."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import workers_celery_app as tasks
from servers import RedisServer, module_redis
from workers_servers import celery_broker

from flask_diaglog import guard_job

__all__ = ["guarded_sender", "module_broker", "module_env", "module_redis"]


@pytest.fixture(scope="module", name="env")
def module_env(redis: RedisServer) -> dict[str, str]:
    base = f"redis://127.0.0.1:{redis.port}"
    return {"WORKERS_BROKER": f"{base}/1", "DIAGLOG_JOB_STORE": f"{base}/0"}


@pytest.fixture(scope="module", autouse=True, name="broker")
def module_broker(env: dict[str, str]) -> Iterator[None]:
    """The test app's Celery app sends to this module's broker (and to no other module's)."""
    with celery_broker(tasks.celery_app, env["WORKERS_BROKER"]):
        yield


def guarded_sender(web: Any, send: Callable[[], Any]) -> str:
    """A guarded view (job id in X-Job-ID) that calls ``send()``; its URL rule."""
    rule = f"/guarded-{uuid.uuid4().hex[:6]}"

    @guard_job
    def view() -> Any:
        send()
        return "", 202

    web.add_url_rule(rule, rule, view, methods=["POST"])
    return rule
