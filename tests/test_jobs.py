"""The duplicate-job guard in one process: 409 answers, job lifetime, replay, stores and leases."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from conftest import WAIT, wait_until
from flask import Flask, Response, request
from werkzeug.exceptions import Conflict

from flask_diaglog import (
    DiagLog,
    DuplicateJob,
    MemoryJobStore,
    current_job_id,
    guard_job,
)
from flask_diaglog.context import current_trace
from flask_diaglog.jobs import JobGuard, get_job_guard
from flask_diaglog.signals import job_rejected

PROBLEM = "application/problem+json"


@pytest.fixture(params=["memory", "redis"])
def store_url(request: pytest.FixtureRequest) -> str:
    """Each guard test that takes this runs against the memory store and a real Redis."""
    if request.param == "memory":
        return "memory"
    return str(request.getfixturevalue("redis_url"))


def held_job_app(
    jobs_app: Callable[..., tuple[Flask, DiagLog]], config: dict[str, Any] | None = None
) -> tuple[Flask, threading.Event, list[threading.Thread]]:
    """An app whose guarded view spawns work that runs until ``gate`` is set."""
    app, diaglog = jobs_app(config)
    gate = threading.Event()
    threads: list[threading.Thread] = []

    def work(job_id: str) -> None:
        assert gate.wait(WAIT)

    @app.post("/generate/<job_id>")
    @guard_job
    def generate(job_id: str) -> tuple[dict[str, Any], int]:
        threads.append(diaglog.spawn(work, current_job_id()))
        return {"job_id": job_id}, 202

    return app, gate, threads


# -- 1. the guard --------------------------------------------------------------------------------


def test_guard_works_bare_and_with_options(jobs_app: Callable[..., tuple[Flask, DiagLog]]) -> None:
    """Both ``@guard_job`` and ``@guard_job(key=..., required=..., ttl=..., replay=...)`` guard."""
    app, _ = jobs_app()

    @app.post("/a/<job_id>")
    @guard_job
    def a(job_id: str) -> str:
        return "a"

    @app.post("/b")
    @guard_job(key=lambda r: r.headers.get("X-Gen"), required=True, ttl=5, replay=True)
    def b() -> str:
        return "b"

    client = app.test_client()
    assert client.post("/a/j1").text == "a"
    assert client.post("/b", headers={"X-Gen": "g1"}).text == "b"
    assert a.__name__ == "a" and b.__name__ == "b"
    with pytest.raises(ValueError, match="TTL"):
        guard_job(ttl=0)


def test_duplicate_gets_409_problem_json_line_and_event(
    jobs_app: Callable[..., tuple[Flask, DiagLog]], logs: Any, store_url: str
) -> None:
    """A second request for an active job gets the documented 409 body, a line and an event;
    the first request and its job are unaffected."""
    app, gate, threads = held_job_app(jobs_app, {"DIAGLOG_JOB_STORE": store_url})
    heard: list[Any] = []

    def on_rejected(sender: Flask, event: Any) -> None:
        heard.append(event)

    client = app.test_client()
    with job_rejected.connected_to(on_rejected, app):
        first = client.post("/generate/gen-7")
        second = client.post("/generate/gen-7", headers={"X-Request-ID": "dup-1"})
    assert first.status_code == 202 and first.json == {"job_id": "gen-7"}
    assert second.status_code == 409
    assert second.mimetype == PROBLEM
    body = second.json
    assert body is not None
    assert body["title"] == "Job already in progress"
    assert body["status"] == 409 and body["job_id"] == "gen-7"
    assert body["type"] and "gen-7" in body["detail"]
    assert set(body) == {"type", "title", "status", "detail", "job_id"}

    [event] = heard
    assert event.kind == "job_rejected" and event.job_id == "gen-7"
    [line] = logs.events("requests", "job_rejected")
    assert line["request_id"] == "dup-1" and line["job_id"] == "gen-7"
    assert line["method"] == "POST" and line["path"] == "/generate/gen-7"

    gate.set()
    for t in threads:
        t.join(WAIT)
    ends = logs.events("jobs", "job_end")
    assert [e["ok"] for e in ends] == [True]  # the original job ran to its end
    statuses = [e["status"] for e in logs.events("requests", "request_end")]
    assert statuses == [202, 409]


def test_duplicate_job_is_a_conflict_that_errorhandler_409_customises(
    jobs_app: Callable[..., tuple[Flask, DiagLog]],
) -> None:
    """DuplicateJob subclasses werkzeug's Conflict, so ``@app.errorhandler(409)`` answers."""
    app, gate, threads = held_job_app(jobs_app)
    assert issubclass(DuplicateJob, Conflict)

    @app.errorhandler(409)
    def busy(exc: Exception) -> tuple[str, int]:
        assert isinstance(exc, DuplicateJob)
        return f"busy: {exc.job_id}", 409

    client = app.test_client()
    assert client.post("/generate/x").status_code == 202
    second = client.post("/generate/x")
    assert (second.status_code, second.text) == (409, "busy: x")
    gate.set()
    for t in threads:
        t.join(WAIT)


# -- 2. job lifetime -----------------------------------------------------------------------------


def test_plain_view_frees_job_at_teardown(jobs_app: Callable[..., tuple[Flask, DiagLog]]) -> None:
    """A view without background work frees its job when the request ends."""
    app, _ = jobs_app()

    @app.post("/run/<job_id>")
    @guard_job
    def run(job_id: str) -> str:
        return "ran"

    client = app.test_client()
    assert [client.post("/run/j").status_code for _ in range(3)] == [200, 200, 200]
    assert get_job_guard(app).store.holder("j") is None


@pytest.mark.parametrize("propagate", [True, False])
def test_view_that_raises_frees_job(
    jobs_app: Callable[..., tuple[Flask, DiagLog]], propagate: bool
) -> None:
    """A view that raises still frees its job (exception propagated or turned into a 500)."""
    app, _ = jobs_app({"PROPAGATE_EXCEPTIONS": propagate})
    calls: list[str] = []

    @app.post("/run/<job_id>")
    @guard_job
    def run(job_id: str) -> str:
        calls.append(job_id)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return "ran"

    client = app.test_client()
    if propagate:
        with pytest.raises(RuntimeError, match="boom"):
            client.post("/run/j")
    else:
        assert client.post("/run/j").status_code == 500
    assert client.post("/run/j").status_code == 200
    assert calls == ["j", "j"]


def test_streamed_response_closed_early_frees_job(
    jobs_app: Callable[..., tuple[Flask, DiagLog]], logs: Any
) -> None:
    """A streamed body keeps its job active while it streams and frees it when closed early."""
    app, _ = jobs_app()

    @app.get("/stream/<job_id>")
    @guard_job
    def stream(job_id: str) -> Response:
        def chunks() -> Iterator[str]:
            for i in range(1000):
                yield f"chunk {i}\n"

        return Response(chunks(), mimetype="text/plain")

    client = app.test_client()
    streaming = client.get("/stream/s1", buffered=False)
    assert next(iter(streaming.response)) == b"chunk 0\n"
    assert client.get("/stream/s1").status_code == 409
    streaming.close()
    ends = logs.events("requests", "request_end")
    assert any(e.get("aborted") for e in ends)
    again = client.get("/stream/s1")
    assert again.status_code == 200 and again.text.endswith("chunk 999\n")


def test_spawned_work_keeps_job_active_until_it_returns(
    jobs_app: Callable[..., tuple[Flask, DiagLog]], store_url: str
) -> None:
    """Work started with ``diaglog.spawn`` keeps the job active; afterwards the id is free."""
    app, gate, threads = held_job_app(jobs_app, {"DIAGLOG_JOB_STORE": store_url})
    client = app.test_client()
    assert client.post("/generate/g").status_code == 202
    assert client.post("/generate/g").status_code == 409  # the request is over, the work is not
    gate.set()
    threads[0].join(WAIT)
    assert not threads[0].is_alive()
    assert client.post("/generate/g").status_code == 202
    gate.set()
    for t in threads:
        t.join(WAIT)


def test_spawned_work_that_raises_frees_job(
    jobs_app: Callable[..., tuple[Flask, DiagLog]], logs: Any
) -> None:
    """Background work that raises frees the job too (and is logged as failed)."""
    app, diaglog = jobs_app()
    gate = threading.Event()
    threads: list[threading.Thread] = []

    def work() -> None:
        assert gate.wait(WAIT)
        raise ValueError("generation failed")

    @app.post("/generate/<job_id>")
    @guard_job
    def generate(job_id: str) -> tuple[str, int]:
        threads.append(diaglog.spawn(work))
        return "", 202

    client = app.test_client()
    assert client.post("/generate/f").status_code == 202
    assert client.post("/generate/f").status_code == 409
    gate.set()
    threads[0].join(WAIT)
    assert [e["ok"] for e in logs.events("jobs", "job_end")] == [False]
    assert client.post("/generate/f").status_code == 202
    for t in threads:
        t.join(WAIT)


def test_nested_spawn_keeps_job_until_the_last_work_ends(
    jobs_app: Callable[..., tuple[Flask, DiagLog]],
) -> None:
    """Work spawned from background work holds the job as well, until it also returns."""
    app, diaglog = jobs_app()
    inner_gate = threading.Event()
    outers: list[threading.Thread] = []
    inners: list[threading.Thread] = []

    def inner() -> None:
        assert inner_gate.wait(WAIT)

    def outer() -> None:
        inners.append(diaglog.spawn(inner))

    @app.post("/generate/<job_id>")
    @guard_job
    def generate(job_id: str) -> tuple[str, int]:
        outers.append(diaglog.spawn(outer))
        return "", 202

    client = app.test_client()
    assert client.post("/generate/n").status_code == 202
    outers[0].join(WAIT)
    assert not outers[0].is_alive() and inners[0].is_alive()
    assert client.post("/generate/n").status_code == 409  # outer ended, inner still runs
    inner_gate.set()
    inners[0].join(WAIT)
    assert client.post("/generate/n").status_code == 202


def test_two_stacked_guards_hold_both_jobs(
    jobs_app: Callable[..., tuple[Flask, DiagLog]],
) -> None:
    """Two guards on one view (two job ids) hold both jobs until the work ends."""
    app, diaglog = jobs_app()
    gate = threading.Event()
    threads: list[threading.Thread] = []

    @app.post("/gen/<job_id>")
    @guard_job(key=lambda r: "gpu-" + r.headers["X-GPU"])
    @guard_job
    @guard_job  # the same id twice: held once, not refused by itself
    def gen(job_id: str) -> tuple[str, int]:
        threads.append(diaglog.spawn(gate.wait, WAIT))
        return "", 202

    client = app.test_client()
    assert client.post("/gen/a", headers={"X-GPU": "0"}).status_code == 202
    assert client.post("/gen/b", headers={"X-GPU": "0"}).status_code == 409  # GPU busy
    assert client.post("/gen/a", headers={"X-GPU": "1"}).status_code == 409  # job busy
    gate.set()
    for t in threads:
        t.join(WAIT)
    store = get_job_guard(app).store
    assert store.holder("a") is None and store.holder("gpu-0") is None


# -- 3. concurrency ------------------------------------------------------------------------------


def test_200_concurrent_requests_exactly_one_accepted(
    jobs_app: Callable[..., tuple[Flask, DiagLog]], logs: Any
) -> None:
    """200 threads racing for one job id: exactly 1 gets 202 and 199 get 409."""
    app, gate, threads = held_job_app(jobs_app)
    n = 200
    barrier = threading.Barrier(n)

    def one(_: int) -> int:
        client = app.test_client()
        barrier.wait(WAIT)
        return client.post("/generate/race").status_code

    with ThreadPoolExecutor(max_workers=n) as pool:
        statuses = list(pool.map(one, range(n)))
    gate.set()
    for t in threads:
        t.join(WAIT)
    assert statuses.count(202) == 1
    assert statuses.count(409) == n - 1
    assert len(logs.events("requests", "job_rejected")) == n - 1
    assert len(threads) == 1


def test_memory_store_is_thread_safe() -> None:
    """Many threads claiming the same id in a MemoryJobStore: exactly one acquires it."""
    store = MemoryJobStore()
    barrier = threading.Barrier(64)

    def claim(i: int) -> str:
        barrier.wait(WAIT)
        return store.claim("same", f"token-{i} -", 30).outcome

    with ThreadPoolExecutor(max_workers=64) as pool:
        outcomes = list(pool.map(claim, range(64)))
    assert outcomes.count("acquired") == 1 and outcomes.count("busy") == 63


# -- 4. stores and leases ------------------------------------------------------------------------


def test_memory_store_is_the_default(jobs_app: Callable[..., tuple[Flask, DiagLog]]) -> None:
    """Without DIAGLOG_JOB_STORE the guard uses a MemoryJobStore."""
    app, _ = jobs_app()
    guard = get_job_guard(app)
    assert isinstance(guard, JobGuard) and isinstance(guard.store, MemoryJobStore)
    assert guard.ttl == 30.0


def test_memory_lease_expires_after_ttl_and_token_checks() -> None:
    """An unrenewed lease expires after its TTL; the stale holder cannot renew or free the new
    owner's lease."""
    now = [100.0]
    store = MemoryJobStore(clock=lambda: now[0])
    assert store.claim("j", "old -", 10).outcome == "acquired"
    now[0] += 9.9
    assert store.claim("j", "new -", 10).outcome == "busy"
    now[0] += 0.2  # the old holder died: nobody renewed
    assert store.claim("j", "new -", 10).outcome == "acquired"
    assert store.release("j", "old -") is False
    assert store.renew("j", "old -", 10) is False
    assert store.holder("j") == "new -"
    assert store.release("j", "new -") is True
    assert store.holder("j") is None


def test_long_job_is_renewed_and_never_expires_while_alive(
    jobs_app: Callable[..., tuple[Flask, DiagLog]], store_url: str
) -> None:
    """A job running for many TTLs stays active: its lease is renewed by the renewer thread."""
    ttl = 1.0  # renewed every 0.33 s; generous for a busy machine
    app, gate, threads = held_job_app(
        jobs_app, {"DIAGLOG_JOB_STORE": store_url, "DIAGLOG_JOB_TTL": ttl}
    )
    guard = get_job_guard(app)
    client = app.test_client()
    assert client.post("/generate/long").status_code == 202
    started = time.monotonic()
    wait_until(
        lambda: guard.renewer.renewals >= 6 and time.monotonic() - started > 3 * ttl,
        "six renewals over three TTLs",
    )
    assert client.post("/generate/long").status_code == 409
    assert guard.store.holder("long") is not None
    gate.set()
    for t in threads:
        t.join(WAIT)
    assert guard.store.holder("long") is None
    assert client.post("/generate/long").status_code == 202
    for t in threads:
        t.join(WAIT)


def test_renewal_racing_the_release_never_retakes_a_freed_job(
    jobs_app: Callable[..., tuple[Flask, DiagLog]], store_url: str
) -> None:
    """A renewal that comes after the job was freed changes nothing (no stuck re-taken lease)."""
    app, _ = jobs_app({"DIAGLOG_JOB_STORE": store_url})
    leases: list[Any] = []

    @app.post("/run/<job_id>")
    @guard_job
    def run(job_id: str) -> str:
        trace = current_trace()
        assert trace is not None
        leases.append(trace.lease)
        return "ran"

    assert app.test_client().post("/run/q").status_code == 200
    guard = get_job_guard(app)
    guard.renewer._renew(leases[0])
    assert guard.store.holder("q") is None


def test_stale_guard_lease_never_frees_the_new_owner(
    jobs_app: Callable[..., tuple[Flask, DiagLog]], logs: Any
) -> None:
    """A job whose lease expired and was taken by another holder warns, and its end does not free
    the new owner's job (token check)."""
    now = [0.0]
    app, gate, threads = held_job_app(jobs_app, {"DIAGLOG_JOB_TTL": 10})
    guard = get_job_guard(app)
    guard.store = store = MemoryJobStore(clock=lambda: now[0])
    assert app.test_client().post("/generate/st").status_code == 202
    [lease] = list(guard.renewer.leases)
    now[0] = 11.0  # e.g. the renewer was cut off from the store for longer than the TTL
    assert store.claim("st", "other-owner -", 10).outcome == "acquired"
    guard.renewer._renew(lease)
    gate.set()
    for t in threads:
        t.join(WAIT)
    assert store.holder("st") == "other-owner -"
    warning = [r for r in logs.json("jobs") if "taken over" in r["msg"]]
    assert len(warning) == 1 and warning[0]["job_id"] == "st" and warning[0]["level"] == "WARNING"


# -- 5. Idempotency-Key --------------------------------------------------------------------------


def replay_app(
    jobs_app: Callable[..., tuple[Flask, DiagLog]], config: dict[str, Any] | None = None
) -> tuple[Flask, list[Any]]:
    app, _ = jobs_app(config)
    calls: list[Any] = []

    @app.post("/orders")
    @guard_job(replay=True, required=True)
    def orders() -> tuple[dict[str, Any], int, dict[str, str]]:
        calls.append(request.get_json())
        if request.get_json().get("fail"):
            raise RuntimeError("payment backend down")
        return {"order": len(calls), "job_id": current_job_id()}, 201, {"Location": "/orders/1"}

    return app, calls


def test_replay_returns_stored_response_for_same_key_and_payload(
    jobs_app: Callable[..., tuple[Flask, DiagLog]], store_url: str, logs: Any
) -> None:
    """A retry with the same Idempotency-Key and payload gets the stored response again."""
    app, calls = replay_app(jobs_app, {"DIAGLOG_JOB_STORE": store_url})
    client = app.test_client()
    headers = {"Idempotency-Key": '"order-42"'}
    first = client.post("/orders", json={"item": "gpu"}, headers=headers)
    retry = client.post("/orders", json={"item": "gpu"}, headers=headers)
    assert first.status_code == 201 and first.json == {"order": 1, "job_id": "order-42"}
    assert (retry.status_code, retry.data, retry.content_type) == (
        first.status_code,
        first.data,
        first.content_type,
    )
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.headers["Location"] == "/orders/1"
    assert "Idempotent-Replayed" not in first.headers
    assert len(calls) == 1
    assert any("job_replayed order-42" in r["msg"] for r in logs.json("requests"))


def test_same_key_with_different_payload_gets_422(
    jobs_app: Callable[..., tuple[Flask, DiagLog]], store_url: str, logs: Any
) -> None:
    """The same key with another payload is refused with 422 problem+json, and is logged."""
    app, calls = replay_app(jobs_app, {"DIAGLOG_JOB_STORE": store_url})
    client = app.test_client()
    headers = {"Idempotency-Key": "k-1"}
    assert client.post("/orders", json={"item": "gpu"}, headers=headers).status_code == 201
    other = client.post("/orders", json={"item": "cpu"}, headers=headers)
    assert other.status_code == 422 and other.mimetype == PROBLEM
    assert other.json is not None and other.json["job_id"] == "k-1"
    assert other.json["status"] == 422
    assert len(calls) == 1
    [line] = logs.events("requests", "job_rejected")
    assert line["reason"] == "payload_mismatch"


def test_different_payload_while_in_flight_gets_422_same_payload_409(
    jobs_app: Callable[..., tuple[Flask, DiagLog]],
) -> None:
    """While the original is in flight: same payload gets 409, another payload gets 422."""
    app, diaglog = jobs_app()
    gate = threading.Event()
    threads: list[threading.Thread] = []

    @app.post("/gen")
    @guard_job(replay=True)
    def gen() -> tuple[str, int]:
        threads.append(diaglog.spawn(gate.wait, WAIT))
        return "accepted", 202

    client = app.test_client()
    h = {"Idempotency-Key": "k"}
    assert client.post("/gen", json={"p": 1}, headers=h).status_code == 202
    assert client.post("/gen", json={"p": 1}, headers=h).status_code == 409
    assert client.post("/gen", json={"p": 2}, headers=h).status_code == 422
    gate.set()
    for t in threads:
        t.join(WAIT)
    replayed = client.post("/gen", json={"p": 1}, headers=h)
    assert (replayed.status_code, replayed.text) == (202, "accepted")
    assert len(threads) == 1


def test_failed_request_is_not_stored_for_replay(
    jobs_app: Callable[..., tuple[Flask, DiagLog]],
) -> None:
    """A view that raised stores nothing: the retry runs the view again."""
    app, calls = replay_app(jobs_app, {"PROPAGATE_EXCEPTIONS": False})
    client = app.test_client()
    h = {"Idempotency-Key": "k-fail"}
    assert client.post("/orders", json={"fail": True}, headers=h).status_code == 500
    assert client.post("/orders", json={"fail": True}, headers=h).status_code == 500
    assert len(calls) == 2


def test_failed_background_work_is_not_stored_for_replay(
    jobs_app: Callable[..., tuple[Flask, DiagLog]],
) -> None:
    """When the spawned work raises, the 202 is not replayed: the retry starts the job again."""
    app, diaglog = jobs_app()
    threads: list[threading.Thread] = []

    def work() -> None:
        raise RuntimeError("GPU fell off the bus")

    @app.post("/gen")
    @guard_job(replay=True)
    def gen() -> tuple[str, int]:
        threads.append(diaglog.spawn(work))
        return "accepted", 202

    client = app.test_client()
    h = {"Idempotency-Key": "bg-fail"}
    for _ in range(2):
        resp = client.post("/gen", headers=h)
        assert resp.status_code == 202 and "Idempotent-Replayed" not in resp.headers
        threads[-1].join(WAIT)
    assert len(threads) == 2


def test_replay_expires_after_replay_ttl(jobs_app: Callable[..., tuple[Flask, DiagLog]]) -> None:
    """After DIAGLOG_JOB_REPLAY_TTL the stored response is gone and the key runs again."""
    app, calls = replay_app(jobs_app, {"DIAGLOG_JOB_REPLAY_TTL": 60})
    now = [0.0]
    get_job_guard(app).store = MemoryJobStore(clock=lambda: now[0])
    client = app.test_client()
    h = {"Idempotency-Key": "k-exp"}
    client.post("/orders", json={}, headers=h)
    now[0] = 59.0
    assert client.post("/orders", json={}, headers=h).headers.get("Idempotent-Replayed")
    now[0] = 61.0
    assert "Idempotent-Replayed" not in client.post("/orders", json={}, headers=h).headers
    assert len(calls) == 2


def test_required_key_missing_gets_400_saying_where_it_is_looked_up(
    jobs_app: Callable[..., tuple[Flask, DiagLog]],
) -> None:
    """``required=True`` without a key: 400 problem+json naming where the key is looked up."""
    app, _ = replay_app(jobs_app)

    @app.post("/custom")
    @guard_job(key=lambda r: r.headers.get("X-Render-ID"), required=True)
    def custom() -> str:
        return "ok"

    client = app.test_client()
    missing = client.post("/orders", json={"item": "gpu"})
    assert missing.status_code == 400 and missing.mimetype == PROBLEM
    assert missing.json is not None
    detail = missing.json["detail"]
    assert "Idempotency-Key" in detail and "X-Job-ID" in detail and "job_id" in detail
    custom_missing = client.post("/custom")
    assert custom_missing.status_code == 400
    assert custom_missing.json is not None and "<lambda>" in custom_missing.json["detail"]
    assert client.post("/custom", headers={"X-Render-ID": "r1"}).text == "ok"


def test_unguarded_without_key_when_not_required(
    jobs_app: Callable[..., tuple[Flask, DiagLog]],
) -> None:
    """Without a job id and without ``required``, a guarded view simply runs."""
    app, _ = jobs_app()

    @app.post("/maybe")
    @guard_job
    def maybe() -> str:
        return "ran"

    client = app.test_client()
    assert [client.post("/maybe").status_code for _ in range(2)] == [200, 200]


def _body_app(jobs_app: Callable[..., tuple[Flask, DiagLog]]) -> tuple[Flask, list[str | None]]:
    app, _ = jobs_app()
    ran: list[str | None] = []

    @app.post("/gen")
    @guard_job
    def gen() -> str:
        ran.append(current_job_id())
        return "ran"

    @app.post("/keyed")
    @guard_job(key=lambda r: r.headers.get("X-Render-ID"))
    def keyed() -> str:
        ran.append(current_job_id())
        return "ran"

    return app, ran


def test_a_body_the_guard_cannot_read_is_refused_not_left_unguarded(
    jobs_app: Callable[..., tuple[Flask, DiagLog]],
) -> None:
    """A JSON body that may hold the job id but is streamed (411), over 1 MiB (413) or not valid
    JSON (400, e.g. a number of 5000 digits): problem+json saying where else to send the id; the
    view does not run unguarded."""
    app, ran = _body_app(jobs_app)
    client = app.test_client()
    body = b'{"job_id": "j-body"}'
    cases = [
        (
            411,
            client.post(
                "/gen",
                input_stream=io.BytesIO(body),
                content_type="application/json",
                headers={"Transfer-Encoding": "chunked"},
                # As a server gives a chunked body: no length, the stream ends where the body does.
                environ_overrides={"wsgi.input_terminated": True, "CONTENT_LENGTH": None},
            ),
        ),
        (
            413,
            client.post(
                "/gen",
                data=b'{"job_id": "j-big", "pad": "' + b"x" * (1 << 20) + b'"}',
                content_type="application/json",
            ),
        ),
        (
            400,
            client.post(
                "/gen", data=b'{"job_id": ' + b"9" * 5000 + b"}", content_type="application/json"
            ),
        ),
        (
            400,
            client.post("/gen", data=b'{"job_id": "j-broken",', content_type="application/json"),
        ),
    ]
    for status, r in cases:
        assert r.status_code == status, (status, r.text)
        assert r.mimetype == PROBLEM
        assert r.json is not None
        assert r.json["type"] == "urn:flask-diaglog:problem:job-id-unreadable"
        assert "X-Job-ID" in r.json["detail"]
    assert ran == []


def test_an_unreadable_body_is_fine_when_the_id_is_found_elsewhere(
    jobs_app: Callable[..., tuple[Flask, DiagLog]],
) -> None:
    """The id in a header or the query string, or a view whose key callable says where it is:
    the body is not needed and the request is guarded as usual."""
    app, ran = _body_app(jobs_app)
    client = app.test_client()
    big = b'{"pad": "' + b"x" * (1 << 20) + b'"}'
    assert (
        client.post(
            "/gen", data=big, content_type="application/json", headers={"X-Job-ID": "j-hdr"}
        ).status_code
        == 200
    )
    assert client.post("/gen?job_id=j-q", data=big, content_type="application/json").text == "ran"
    keyed = client.post(
        "/keyed", data=big, content_type="application/json", headers={"X-Render-ID": "r-1"}
    )
    assert keyed.status_code == 200
    assert client.post("/gen", data=b"x" * (2 << 20), content_type="image/png").text == "ran"
    assert ran == ["j-hdr", "j-q", "r-1", None]


def test_key_callable_overrides_the_job_id(
    jobs_app: Callable[..., tuple[Flask, DiagLog]], logs: Any
) -> None:
    """``key=`` picks the job id for this view; the request's lines carry that id."""
    app, diaglog = jobs_app()
    gate = threading.Event()
    threads: list[threading.Thread] = []

    @app.post("/render/<job_id>")
    @guard_job(key=lambda r: "scene-" + r.view_args["job_id"].split("-")[0])  # type: ignore[index]
    def render(job_id: str) -> tuple[str, int]:
        threads.append(diaglog.spawn(gate.wait, WAIT))
        return str(current_job_id()), 202

    client = app.test_client()
    first = client.post("/render/a-1")
    assert (first.status_code, first.text) == (202, "scene-a")
    assert client.post("/render/a-2").status_code == 409  # same scene, other frame
    assert client.post("/render/b-1").status_code == 202
    gate.set()
    for t in threads:
        t.join(WAIT)
    [rejected] = logs.events("requests", "job_rejected")
    assert rejected["job_id"] == "scene-a"


def test_guard_still_guards_a_path_excluded_from_logging(
    jobs_app: Callable[..., tuple[Flask, DiagLog]], logs: Any
) -> None:
    """On a DIAGLOG_EXCLUDE path the job is held while the view runs and replay still works."""
    app, _ = jobs_app({"DIAGLOG_EXCLUDE": "/internal"})
    seen: list[int] = []

    @app.post("/internal/<job_id>")
    @guard_job(replay=True)
    def internal(job_id: str) -> dict[str, Any]:
        inner = app.test_client().post(f"/internal/{job_id}")  # a duplicate while we run
        seen.append(inner.status_code)
        return {"n": len(seen)}

    client = app.test_client()
    assert client.post("/internal/e1").json == {"n": 1}
    replayed = client.post("/internal/e1")
    assert replayed.json == {"n": 1} and replayed.headers["Idempotent-Replayed"] == "true"
    assert seen == [409]
    assert logs.text("requests") == ""


def test_guard_is_a_no_op_when_diaglog_is_disabled(make_app: Callable[..., Flask]) -> None:
    """With DIAGLOG_ENABLED off, guarded views run as if undecorated."""
    app = make_app({"DIAGLOG_ENABLED": False})

    @app.post("/run/<job_id>")
    @guard_job
    def run(job_id: str) -> str:
        if request.args.get("inner"):
            return "ran"
        # The same job again while this one is active: a working guard would answer 409.
        inner = app.test_client().post(f"/run/{job_id}?inner=1")
        return f"ran, inner {inner.status_code} {inner.text}"

    assert app.test_client().post("/run/j").text == "ran, inner 200 ran"


def test_a_guarded_view_of_an_app_without_diaglog_is_an_error_not_unguarded() -> None:
    """``@guard_job`` on an app that never called ``DiagLog(app)``: the request fails with an
    error that says so, instead of running unguarded (duplicates would pass unseen)."""
    app = Flask(__name__)
    app.testing = True  # the error propagates to the test client

    @app.post("/run/<job_id>")
    @guard_job
    def run(job_id: str) -> str:
        return "ran"

    with pytest.raises(RuntimeError, match=r"not registered with flask-diaglog.*DiagLog\(app\)"):
        app.test_client().post("/run/j")


def test_store_classes_are_exported() -> None:
    """The stores are public names of the package."""
    import flask_diaglog

    assert {"MemoryJobStore", "RedisJobStore"} <= set(flask_diaglog.__all__)
