"""The documented multi-worker ``/api/orders`` example (docs/examples/orders.py), run as written
under ``gunicorn -w 2`` with a real Redis: retries are replayed by whichever worker answers."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from servers import gunicorn

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "orders.py"

pytestmark = pytest.mark.slow


@dataclass
class Answer:
    status: int
    headers: Any
    body: dict[str, Any]
    pid: int


class Orders:
    """The example served by gunicorn; each answer names the worker process that gave it."""

    def __init__(self, base: str, log_dir: Path) -> None:
        self.base = base
        self.log_dir = log_dir

    def pid_of(self, request_id: str) -> int:
        """The worker that wrote the request's end line (it may follow the response briefly)."""
        deadline = time.monotonic() + 10
        path = self.log_dir / "requests.log"
        while True:
            for line in path.read_text().splitlines() if path.exists() else []:
                rec = json.loads(line)
                if rec["event"] == "request_end" and rec["request_id"] == request_id:
                    return int(rec["pid"])
            assert time.monotonic() < deadline, f"no end line for request {request_id}"
            time.sleep(0.02)

    def post(self, payload: Any, key: str | None = None) -> Answer:
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Idempotency-Key"] = f'"{key}"'
        req = urllib.request.Request(
            f"{self.base}/api/orders", data=json.dumps(payload).encode(), headers=headers
        )
        try:
            resp = urllib.request.urlopen(req, timeout=10)
        except urllib.error.HTTPError as err:
            resp = err
        with resp:
            body = json.loads(resp.read())
        return Answer(resp.status, resp.headers, body, self.pid_of(resp.headers["X-Request-ID"]))


@pytest.fixture(scope="module")
def orders(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orders]:
    log_dir = tmp_path_factory.mktemp("orders") / "logs"
    env = {
        "DIAGLOG_JOB_STORE": redis_server.url,
        "DIAGLOG_LOG_DIR": str(log_dir),
        "DIAGLOG_FORMAT": "json",
    }
    with gunicorn("orders:app", workers=2, env=env, pythonpath=EXAMPLE.parent) as base:
        yield Orders(base, log_dir)


def test_a_retry_is_replayed_by_the_other_worker(orders: Orders) -> None:
    """A retry answered by the other worker gets the first answer back (the same new order id),
    marked as replayed: the view did not run again."""
    for attempt in range(30):
        key = f"order-replay-{attempt}"
        first = orders.post({"item": "gpu"}, key)
        assert first.status == 201 and "Idempotent-Replayed" not in first.headers
        for _ in range(20):
            retry = orders.post({"item": "gpu"}, key)
            assert retry.status == 201 and retry.headers["Idempotent-Replayed"] == "true"
            assert retry.body == first.body and first.body["item"] == "gpu"
            assert retry.headers["Location"] == f"/api/orders/{first.body['order']}"
            if retry.pid != first.pid:
                return
    pytest.fail("no retry was ever answered by the other worker")


def test_the_same_key_with_another_payload_gets_422(orders: Orders) -> None:
    """Reusing a key for a different order is refused with 422 problem+json, on any worker."""
    assert orders.post({"item": "gpu"}, "order-reused").status == 201
    pids = set()
    for _ in range(300):  # sync workers take turns only loosely on a busy machine
        answer = orders.post({"item": "cpu"}, "order-reused")
        assert answer.status == 422
        assert answer.headers["Content-Type"] == "application/problem+json"
        assert answer.body["job_id"] == "order-reused"
        pids.add(answer.pid)
        if len(pids) == 2:
            return
    pytest.fail("only one worker ever answered")


def test_an_order_without_a_key_gets_400(orders: Orders) -> None:
    """The key is required: without it the answer is 400 problem+json and no order is made."""
    answer = orders.post({"item": "gpu"})
    assert answer.status == 400
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert answer.body["title"] == "Job id required"


def test_the_docs_include_the_example_from_its_file() -> None:
    """The deployment page shows this file through a literalinclude, so the two cannot drift."""
    page = (ROOT / "docs" / "deployment.md").read_text()
    assert "```{literalinclude} examples/orders.py" in page
