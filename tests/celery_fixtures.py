"""The fixtures of the Celery test modules, imported by each: ``redis``, a Redis of the module
(the broker, db 1, and the job store, db 0); ``env``, its environment for the worker; and
``broker`` (autouse), the test Celery app pointed at that broker. Module-scoped, so each
importing module gets its own Redis and no module sends its tasks to another's."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import workers_celery_app as tasks
from servers import RedisServer
from workers_servers import celery_broker

__all__ = ["module_broker", "module_env", "module_redis"]


@pytest.fixture(scope="module", name="redis")
def module_redis() -> Iterator[RedisServer]:
    """A Redis of this module: the broker (db 1) and the job store (db 0)."""
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="module", name="env")
def module_env(redis: RedisServer) -> dict[str, str]:
    base = f"redis://127.0.0.1:{redis.port}"
    return {"WORKERS_BROKER": f"{base}/1", "DIAGLOG_JOB_STORE": f"{base}/0"}


@pytest.fixture(scope="module", autouse=True, name="broker")
def module_broker(env: dict[str, str]) -> Iterator[None]:
    """The test app's Celery app sends to this module's broker (and to no other module's)."""
    with celery_broker(tasks.celery_app, env["WORKERS_BROKER"]):
        yield
