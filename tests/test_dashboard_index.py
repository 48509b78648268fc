"""The dashboard's index of the log files: incremental, rotation-proof, never read twice."""

from __future__ import annotations

import contextlib
import errno
import gzip
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from test_cli import render

from flask_diaglog import logread, stage
from flask_diaglog.dashboard import index as index_module
from flask_diaglog.dashboard.index import Index
from flask_diaglog.files import LogFile

#: Time enough for a refresh to finish on a loaded machine (the default is 0.15 s).
BUDGET = 30.0


def _app(make_app: Callable[..., Flask], fmt: str, **config: object) -> Flask:
    app = make_app({"DIAGLOG_FORMAT": fmt, **config})

    @app.get("/n/<int:n>")
    def n(n: int) -> str:
        with stage("work"):
            pass
        return "ok"

    return app


def _settle(log_dir: Path) -> None:
    """Wait until the writer's compressor thread has gzipped every backup."""
    for _ in range(1000):
        if not [p for p in log_dir.glob("requests.log.*") if p.suffix != ".gz"]:
            return
        time.sleep(0.01)


def _paths(index: Index) -> list[str]:
    return sorted(i.path or "" for i in index.items if i.kind == "request")


@pytest.mark.parametrize("fmt", ["json", "plain"])
def test_refresh_reads_only_new_lines(
    make_app: Callable[..., Flask], log_dir: Path, fmt: str
) -> None:
    """A second refresh folds in only what was written since the first."""
    app = _app(make_app, fmt)
    client = app.test_client()
    for i in range(5):
        client.get(f"/n/{i}")
    index = Index(str(log_dir))
    index.refresh(BUDGET)
    assert index.lines == 5 * 3 and len(index.items) == 5
    index.refresh(BUDGET)
    assert index.lines == 15
    client.get("/n/99")
    index.refresh(BUDGET)
    assert index.lines == 18 and _paths(index)[-1] == "/n/99"


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("fmt", ["json", "plain"])
def test_rotation_loses_and_repeats_nothing(
    make_app: Callable[..., Flask], log_dir: Path, fmt: str, compress: bool
) -> None:
    """Refreshing between rotations (renames, gzip) indexes every request exactly once."""
    app = _app(
        make_app,
        fmt,
        DIAGLOG_MAX_BYTES=2000,
        DIAGLOG_BACKUP_COUNT=50,
        DIAGLOG_COMPRESS=compress,
    )
    client = app.test_client()
    index = Index(str(log_dir))
    for i in range(60):
        client.get(f"/n/{i}")
        if i % 7 == 0:
            index.refresh(BUDGET)  # mid-rotation, mid-compression
    if compress:
        _settle(log_dir)  # a file renamed during a refresh is read by the next one
    index.refresh(BUDGET)
    assert len(list(log_dir.glob("requests.log.*"))) > 5
    assert _paths(index) == sorted(f"/n/{i}" for i in range(60))
    assert all(i.status == 200 and i.duration_ms is not None for i in index.items)
    assert index.skipped == 0 and index.complete


def test_cold_read_of_rotated_set_is_complete(
    make_app: Callable[..., Flask], log_dir: Path
) -> None:
    """A first refresh of a set that already rotated reads backups (gzipped too) and current."""
    app = _app(
        make_app, "json", DIAGLOG_MAX_BYTES=3000, DIAGLOG_BACKUP_COUNT=50, DIAGLOG_COMPRESS=True
    )
    client = app.test_client()
    for i in range(40):
        client.get(f"/n/{i}")
    _settle(log_dir)
    assert list(log_dir.glob("requests.log.*.gz"))
    index = Index(str(log_dir))
    index.refresh(BUDGET)
    assert _paths(index) == sorted(f"/n/{i}" for i in range(40))


def test_torn_tail_waits_for_its_newline(make_app: Callable[..., Flask], log_dir: Path) -> None:
    """Half a line at the end of the live file is not read (nor counted) until it is whole."""
    app = _app(make_app, "json")
    app.test_client().get("/n/1")
    path = log_dir / "requests.log"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]) + lines[-1][:25])
    index = Index(str(log_dir))
    index.refresh(BUDGET)
    assert index.skipped == 0 and index.items[0].status is None
    with open(path, "ab") as fh:
        fh.write(lines[-1][25:])
    index.refresh(BUDGET)
    assert index.skipped == 0 and index.items[0].status == 200


def test_a_line_that_fails_to_fold_in_is_skipped_and_read_past(
    make_app: Callable[..., Flask], log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line the field check lets through but the index cannot fold in (here: the check is
    switched off) is skipped and counted once; the lines after it are indexed."""
    monkeypatch.setattr(logread, "well_formed", lambda data: True)
    app = _app(make_app, "json")
    client = app.test_client()
    client.get("/n/1")
    with open(log_dir / "requests.log", "a") as fh:
        fh.write(
            '{"ts":"2026-11-30T10:00:00.000+00:00","event":"hang","request_id":"r","hung":"x"}\n'
        )
    index = Index(str(log_dir))
    index.refresh(BUDGET)
    client.get("/n/2")
    index.refresh(BUDGET)
    index.refresh(BUDGET)
    assert index.skipped == 1 and index.complete
    assert {"/n/1", "/n/2"} <= set(_paths(index))


def test_a_small_budget_reads_in_steps(make_app: Callable[..., Flask], log_dir: Path) -> None:
    """With no time to spare a refresh stops early and says so; later refreshes finish."""
    app = _app(make_app, "json")
    client = app.test_client()
    for i in range(20):
        client.get(f"/n/{i}")
    index = Index(str(log_dir))
    index.refresh(budget=0.0)
    assert not index.complete and index.items == []
    for _ in range(5):
        index.refresh()
    assert index.complete and len(index.items) == 20


def test_trace_lines_are_read_back_from_their_spans(
    make_app: Callable[..., Flask], log_dir: Path
) -> None:
    """A request's lines are read back from where the index saw them, across a rotation."""
    app = _app(make_app, "plain", DIAGLOG_MAX_BYTES=1500, DIAGLOG_BACKUP_COUNT=50)
    client = app.test_client()
    rids = [client.get(f"/n/{i}").headers["X-Request-ID"] for i in range(30)]
    index = Index(str(log_dir))
    index.refresh(BUDGET)
    for rid in (rids[0], rids[15], rids[-1]):
        lines = index.trace_lines([rid])
        assert [r.event for r in lines] == ["request_start", "stage", "request_end"]
        assert {r.request_id for r in lines} == {rid}


def test_benchmark_log_set_is_read_whole(tmp_path: Path) -> None:
    """The benchmark's generated set (10 rotated files) is diaglog's own lines: none skipped."""
    from benchmarks.dashboard import make_log_set

    n = make_log_set(tmp_path, 300_000)
    assert len(list(tmp_path.glob("requests.log*"))) == 10
    index = Index(str(tmp_path))
    index.refresh(BUDGET)
    assert index.complete and index.skipped == 0
    assert sum(1 for i in index.items if i.kind == "request" and i.status) == n
    assert sum(1 for i in index.items if i.kind == "job") == n // 4


#: The first line of every file in the tests below: the same line, written in the same
#: millisecond (a plain line has no pid: two workers starting at once can write it alike).
_STARTED = render("json", time.time(), "log", "worker started", logger="app")


def _request_lines(rid: str) -> list[str]:
    now = time.time()
    return [
        render("json", now, "request_start", f"request_start GET /{rid}", rid, None,
               {"method": "GET", "path": f"/{rid}"}),
        render("json", now + 0.001, "request_end", f"request_end GET /{rid} 200 1.00ms", rid,
               None, {"method": "GET", "path": f"/{rid}", "status": 200, "duration_ms": 1.0}),
    ]  # fmt: skip


def _first_line(path: Path) -> str:
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        return str(fh.readline())


def _shown(client: Any) -> list[str]:
    """The request ids the dashboard's API lists, once it has read every file."""
    for _ in range(100):
        d = client.get("/_diaglog/api/requests?per_page=500").json
        if d["index"]["complete"]:
            break
    assert d["index"]["skipped_lines"] == 0, d["index"]
    return sorted(i["request_id"] for i in d["items"])


def _trace_events(client: Any, rid: str) -> list[str]:
    d = client.get(f"/_diaglog/api/trace/{rid}").json
    return [ln["event"] for s in d["sections"] for ln in s["lines"]]


@pytest.mark.parametrize("how", ["rename", "gzip", "copytruncate"])
def test_files_with_the_same_first_line_are_told_apart(
    make_app: Callable[..., Flask], log_dir: Path, how: str
) -> None:
    """Files that all start with the same line, rotated between two looks of the dashboard (by
    the real writer, renamed or gzipped; or copied to .1 and emptied in place, as logrotate's
    copytruncate does): the API lists the requests of every file, each with its lines."""
    app = make_app({"DIAGLOG_FORMAT": "json", "DIAGLOG_DASHBOARD": True})
    client = app.test_client()
    path = log_dir / "requests.log"
    rids: list[str] = []
    if how == "copytruncate":
        path.write_text("".join([_STARTED, *_request_lines("r0")]))
        rids.append("r0")
        assert _shown(client) == rids
        shutil.copyfile(path, log_dir / "requests.log.1")
        with open(path, "r+") as fh:
            fh.truncate(0)
        path.write_text("".join([_STARTED, *_request_lines("r1"), *_request_lines("r2")]))
        rids += ["r1", "r2"]
    else:
        writer = LogFile(str(path), max_bytes=1500, backup_count=50, compress=how == "gzip")
        with contextlib.closing(writer):
            for count in (3, 20, 2, 20):
                for _ in range(count):
                    if path.stat().st_size == 0:  # a new file, looked at with one line in it
                        writer.write(_STARTED.encode())
                        _shown(client)
                    rids.append(f"r{len(rids)}")
                    writer.write("".join(_request_lines(rids[-1])).encode())
                assert writer.wait_compressed()
                assert _shown(client) == sorted(rids)
        firsts = [_first_line(p) for p in log_dir.glob("requests.log*")]
        assert len(firsts) > 3 and set(firsts) <= {_STARTED, ""}, firsts
    assert _shown(client) == sorted(rids)
    for rid in (rids[0], rids[len(rids) // 2], rids[-1]):
        assert _trace_events(client, rid) == ["request_start", "request_end"]


@pytest.mark.parametrize("copied", ["whole", "part"])
def test_copytruncate_seen_between_its_copy_and_its_truncate_repeats_nothing(
    make_app: Callable[..., Flask], log_dir: Path, copied: str
) -> None:
    """logrotate's copytruncate looked at by the dashboard after its copy (whole, or part
    written) and before its truncate: the API lists each request once, then and after."""
    app = make_app({"DIAGLOG_FORMAT": "json", "DIAGLOG_DASHBOARD": True})
    client = app.test_client()
    path, backup = log_dir / "requests.log", log_dir / "requests.log.1"
    rids = [f"r{i}" for i in range(10)]
    path.write_text("".join([_STARTED, *(ln for r in rids[:5] for ln in _request_lines(r))]))
    assert _shown(client) == rids[:5]
    with open(path, "a") as fh:
        fh.write("".join(ln for r in rids[5:] for ln in _request_lines(r)))
    data = path.read_bytes()
    backup.write_bytes(data if copied == "whole" else data[: len(data) // 2])
    assert _shown(client) == rids
    backup.write_bytes(data)  # the copy done, then the truncate
    with open(path, "r+") as fh:
        fh.truncate(0)
    rids += ["r10", "r11"]
    path.write_text("".join(ln for r in rids[10:] for ln in _request_lines(r)))
    assert _shown(client) == sorted(rids)
    for rid in ("r0", "r7", "r11"):
        assert _trace_events(client, rid) == ["request_start", "request_end"]


def test_a_log_that_cannot_be_opened_once_is_not_read_again(
    make_app: Callable[..., Flask], log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """requests.log cannot be opened for one look of the dashboard (too many open files): it
    is named unreadable, and once it can be read again only its new lines are added."""
    app = make_app({"DIAGLOG_FORMAT": "json", "DIAGLOG_DASHBOARD": True})
    client = app.test_client()
    path = log_dir / "requests.log"
    path.write_text("".join([_STARTED, *_request_lines("r0"), *_request_lines("r1")]))
    assert _shown(client) == ["r0", "r1"]
    real = index_module.open_log

    def failing(name: str) -> Any:
        if name.endswith("requests.log"):
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real(name)

    monkeypatch.setattr(index_module, "open_log", failing)
    d = client.get("/_diaglog/api/requests?per_page=500").json
    assert [f.split(" ")[0] for f in d["index"]["unreadable_files"]] == ["requests.log"]
    monkeypatch.undo()
    with open(path, "a") as fh:
        fh.write("".join(_request_lines("r2")))
    assert _shown(client) == ["r0", "r1", "r2"]
