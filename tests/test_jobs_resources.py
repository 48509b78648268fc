"""Issue 14 items 7 and 8: a discarded app leaves no thread or descriptor behind, and the replay
store stays under its caps whatever keys clients send."""

from __future__ import annotations

import gc
import os
import threading
import tracemalloc
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import WAIT, wait_until
from flask import Flask

from flask_diaglog import DiagLog, MemoryJobStore, guard_job
from flask_diaglog.jobs import get_job_guard

APPS = 200
#: Descriptors a library may cache once per process (none seen so far; a tiny constant).
FD_SLACK = 2


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def threads() -> int:
    return len(threading.enumerate())


def all_collected(refs: list[weakref.ref[Flask]]) -> bool:
    gc.collect()
    return all(r() is None for r in refs)


def new_renewers(earlier: set[threading.Thread]) -> list[threading.Thread]:
    return [
        t for t in threading.enumerate() if t.name == "diaglog-lease-renewer" and t not in earlier
    ]


def use_app(tmp_path: Path, i: int, store: str, guarded: bool) -> weakref.ref[Flask]:
    """Build an app, serve one (guarded) request, and drop it; a weak reference is returned."""
    app = Flask("discarded_app", instance_path=str(tmp_path / "instance"))
    app.config.update(
        TESTING=True,
        DIAGLOG_LOG_DIR=str(tmp_path / f"logs-{i}"),
        DIAGLOG_JOB_STORE=store,
        DIAGLOG_JOB_REPLAY_TTL=60,
    )
    DiagLog(app)

    @app.post("/generate/<job_id>")
    @guard_job(replay=True)
    def generate(job_id: str) -> str:
        return "done"

    @app.post("/plain/<job_id>")
    def plain(job_id: str) -> str:
        return "done"

    path = f"/generate/j{i}" if guarded else f"/plain/j{i}"
    assert app.test_client().post(path).text == "done"
    return weakref.ref(app)


@pytest.mark.parametrize(
    ("store", "guarded"),
    [("memory", True), ("memory", False), ("redis", True)],
    ids=["memory-guarded", "memory-unguarded", "redis-guarded"],
)
def test_200_discarded_apps_leave_no_thread_and_no_descriptor(
    tmp_path: Path, request: pytest.FixtureRequest, store: str, guarded: bool
) -> None:
    """200 apps, each with one request, then dropped: after gc the process has the threads and
    file descriptors it had before (log files, sidecars, renewer threads, Redis connections)."""
    url = store if store == "memory" else str(request.getfixturevalue("redis_url"))
    earlier = set(threading.enumerate())
    warm_up = use_app(tmp_path, -1, url, guarded)  # imports, caches: what a first app loads once
    wait_until(lambda: all_collected([warm_up]), "the warm-up app to be collected")
    wait_until(lambda: not new_renewers(earlier), "the warm-up app's renewer to end")
    before_threads, before_fds = threads(), open_fds()

    refs = [use_app(tmp_path, i, url, guarded) for i in range(APPS)]

    # Nothing keeps a discarded app alive (a renewer thread may be finishing its last round).
    wait_until(lambda: all_collected(refs), "the discarded apps to be collected")
    wait_until(lambda: threads() <= before_threads, "the renewer threads to end")
    # A descriptor is closed when its object is finalized, which may lag (a full run's other
    # threads): wait for it; a leak of 200 apps' files or connections never settles.
    wait_until(lambda: open_fds() <= before_fds + FD_SLACK, "the descriptors to be closed")


def test_renewer_holds_the_app_only_weakly_and_ends_with_it(tmp_path: Path) -> None:
    """The renewer thread does not keep its app alive; once the app is gone, the thread ends."""
    earlier = set(threading.enumerate())
    ref = use_app(tmp_path, 0, "memory", True)
    wait_until(lambda: all_collected([ref]), "the app to be collected")
    wait_until(lambda: not new_renewers(earlier), "the renewer thread to end")


def test_renewer_sleeps_without_a_deadline_once_the_last_lease_goes(
    jobs_app: Callable[..., tuple[Flask, DiagLog]],
) -> None:
    """No polling: before the first lease there is no thread; while a lease is held the thread
    waits for its renewal; when the last one goes it is woken and sleeps until a lease comes."""
    app, diaglog = jobs_app({"DIAGLOG_JOB_TTL": 3600})
    gate = threading.Event()
    spawned: list[threading.Thread] = []

    @app.post("/generate/<job_id>")
    @guard_job
    def generate(job_id: str) -> tuple[str, int]:
        spawned.append(diaglog.spawn(gate.wait, WAIT))
        return "", 202

    renewer = get_job_guard(app).renewer
    assert renewer.thread is None
    assert app.test_client().post("/generate/a").status_code == 202
    thread = renewer.thread
    assert thread is not None and thread.is_alive()
    wait_until(lambda: renewer.next_at < float("inf"), "the thread to wait for the renewal")
    gate.set()
    spawned[0].join(WAIT)
    # The renewal is 20 minutes away: only the wake-up on the last removal gets here in time.
    wait_until(lambda: renewer.next_at == float("inf"), "the thread to be woken")
    assert thread.is_alive() and renewer.thread is thread


# -- item 8: bounded replay ----------------------------------------------------------------------


def test_100000_unique_keys_stay_under_the_replay_caps() -> None:
    """100 000 jobs with unique keys, each storing a replay record: the store never holds more
    than its caps, evicts the oldest, counts every eviction, and its memory stops growing."""
    cap_entries, cap_bytes = 500, 40_000
    store = MemoryJobStore(max_entries=cap_entries, max_bytes=cap_bytes)
    record = "r" * 100  # 100 + len(key) bytes per record: the byte cap binds first
    n, traced_from = 100_000, 80_000
    try:
        for i in range(n):
            if i == traced_from:
                gc.collect()
                tracemalloc.start()  # from here on, only what the last 20 000 keys left behind
            key = f"k{i:06d}"
            assert store.claim(key, "t -", 30, check_done=True).outcome == "acquired"
            assert store.release(key, "t -", record, 600) is True
            assert store.replay_entries <= cap_entries and store.replay_bytes <= cap_bytes
        gc.collect()
        left_behind = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    kept = store.replay_entries
    assert kept == cap_bytes // (len(record) + len("k000000"))
    assert store.evictions == n - kept
    # The newest are kept, the oldest are gone (and run again as new jobs).
    assert store.claim(f"k{n - 1:06d}", "x -", 30, check_done=True).outcome == "done"
    assert store.claim("k000000", "x -", 30, check_done=True).outcome == "acquired"
    # Unbounded, 20 000 records would leave megabytes; bounded, at most the cache's worth.
    assert left_behind < 512 * 1024


def test_entry_cap_evicts_the_oldest_first() -> None:
    """With only the entry cap binding, the store keeps exactly the newest max_entries."""
    store = MemoryJobStore(max_entries=3)
    for key in "abcde":
        store.claim(key, "t -", 30)
        store.release(key, "t -", "{}", 600)
    assert store.replay_entries == 3 and store.evictions == 2
    assert [store.claim(k, "x -", 30, check_done=True).outcome for k in "abcde"] == [
        "acquired", "acquired", "done", "done", "done",
    ]  # fmt: skip


def test_guard_applies_the_replay_caps_from_config_and_counts_evictions(
    jobs_app: Callable[..., tuple[Flask, DiagLog]],
) -> None:
    """DIAGLOG_JOB_REPLAY_MAX_ENTRIES caps the guard's replay records; evicted keys run again,
    kept ones replay, and the guard reports the evictions (``replay_evictions``, ``stats()``)."""
    app, _ = jobs_app({"DIAGLOG_JOB_REPLAY_MAX_ENTRIES": 20})
    calls: list[str] = []

    @app.post("/orders")
    @guard_job(replay=True)
    def orders() -> tuple[str, int]:
        calls.append("x")
        return "created", 201

    client = app.test_client()
    for i in range(100):
        assert client.post("/orders", headers={"Idempotency-Key": f"k{i}"}).status_code == 201
    guard = get_job_guard(app)
    assert guard.replay_evictions == 80 and guard.stats()["replay_evictions"] == 80
    assert client.post("/orders", headers={"Idempotency-Key": "k99"}).headers.get(
        "Idempotent-Replayed"
    )
    assert (
        "Idempotent-Replayed"
        not in client.post("/orders", headers={"Idempotency-Key": "k0"}).headers
    )
    assert len(calls) == 101


def test_response_larger_than_the_byte_cap_is_not_stored(
    jobs_app: Callable[..., tuple[Flask, DiagLog]],
) -> None:
    """DIAGLOG_JOB_REPLAY_MAX_BYTES also bounds one response: a larger body is not kept, and
    what is already kept is not evicted for it."""
    app, _ = jobs_app({"DIAGLOG_JOB_REPLAY_MAX_BYTES": "2k"})

    @app.post("/echo/<int:size>")
    @guard_job(replay=True)
    def echo(size: int) -> str:
        return "x" * size

    client = app.test_client()
    small, big = {"Idempotency-Key": "small"}, {"Idempotency-Key": "big"}
    client.post("/echo/10", headers=small)
    client.post("/echo/4000", headers=big)
    assert client.post("/echo/10", headers=small).headers.get("Idempotent-Replayed")
    assert "Idempotent-Replayed" not in client.post("/echo/4000", headers=big).headers
    assert get_job_guard(app).replay_evictions == 0


def test_redis_replay_records_expire_with_their_ttl(
    jobs_app: Callable[..., tuple[Flask, DiagLog]], redis_url: str
) -> None:
    """Redis bounds its replay records by their TTL: each has a PX expiry of
    DIAGLOG_JOB_REPLAY_TTL, so unique keys never pile up beyond one TTL's worth."""
    app, _ = jobs_app({"DIAGLOG_JOB_STORE": redis_url, "DIAGLOG_JOB_REPLAY_TTL": 60})

    @app.post("/orders")
    @guard_job(replay=True)
    def orders() -> tuple[str, int]:
        return "created", 201

    client = app.test_client()
    client.post("/orders", headers={"Idempotency-Key": "r1"})
    store: Any = get_job_guard(app).store
    ttl_ms = store.client.pttl("diaglog:{r1}:done")
    assert 0 < ttl_ms <= 60_000
    assert get_job_guard(app).replay_evictions == 0
