"""The recorder on its own: a failing part of it is counted and reported, never raised."""

from __future__ import annotations

import logging
import threading

import pytest

from flask_diaglog import Event
from flask_diaglog.context import Trace
from flask_diaglog.files.render import plain_line
from flask_diaglog.record import Recorder

INFO = logging.INFO


class _File:
    def __init__(self, files: Files, name: str) -> None:
        self.files, self.name = files, name

    def write(self, data: bytes) -> None:
        if b"explode" in data:
            raise ValueError("files bug")
        level = logging.ERROR if b" | ERROR | " in data else INFO
        self.files.lines.append((self.name, level, data.decode()))


class Files:
    """Keeps the lines it is given; a line containing ``explode`` raises like a renderer bug."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, int, str]] = []
        self.targets = {"requests": _File(self, "requests"), "jobs": _File(self, "jobs")}
        self.errors = None


def test_failing_files_are_counted_and_reported_once(capsys: pytest.CaptureFixture[str]) -> None:
    """A line the files refuse is counted, reported once (stderr and an ERROR line); later lines
    are written."""
    files = Files()
    rec = Recorder(files=files, render=plain_line)
    rec.record("log", None, INFO, "explode 1")
    rec.record("log", None, INFO, "explode 2")
    rec.record("log", None, INFO, "fine")
    assert rec.failures == {"files": 2}
    assert capsys.readouterr().err.count("sink files failed") == 1
    reports = [(lvl, line) for _, lvl, line in files.lines if "sink files failed" in line]
    assert len(reports) == 1 and reports[0][0] == logging.ERROR
    assert "ValueError: files bug" in reports[0][1]
    assert files.lines[-1][2].endswith("| fine\n")


def test_failing_registry_is_counted_and_the_line_still_written(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A registry that raises on a start line is counted; the line is written all the same."""

    class Registry:
        def add(self, trace: Trace, name: str | None = None) -> None:
            raise RuntimeError("registry bug")

        def discard(self, trace: Trace) -> None:
            pass

    files = Files()
    rec = Recorder(files=files, render=plain_line, registry=Registry())
    trace = Trace(rec, "request", "r1", None, "GET", "/")
    rec.record("request_start", trace, INFO, "request_start GET /")
    assert rec.failures == {"inflight": 1}
    assert "sink inflight failed" in capsys.readouterr().err
    (line,) = [line for _, _, line in files.lines if "req=r1" in line]
    assert line.endswith("| request_start GET /\n")


def test_raising_subscriber_is_skipped_and_others_still_called(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A subscriber that raises is counted under its name; the next subscriber gets the event."""
    rec = Recorder(files=None, render=plain_line)
    heard: list[Event] = []

    def bad(event: Event) -> None:
        raise ValueError("subscriber bug")

    rec.subscribe(bad, "bad")
    rec.subscribe(heard.append, "good")
    for n in range(3):
        rec.record("log", None, INFO, f"line {n}", {"odd": {n}})
    assert rec.failures == {"bad": 3}
    assert [(e.msg, e.fields) for e in heard] == [(f"line {n}", {"odd": {n}}) for n in range(3)]
    assert capsys.readouterr().err.count("subscriber bug") == 1


def _parts(ev: Event) -> dict[str, object]:
    names = ("kind", "ts", "level", "level_name", "logger", "msg", "request_id", "job_id")
    more = ("fields", "target", "exc", "trace", "pid", "thread")
    return {n: getattr(ev, n) for n in (*names, *more)} | {"repr": repr(ev), "d": ev.to_dict()}


def test_the_recorders_event_is_the_event_the_constructor_builds() -> None:
    """Every documented attribute, to_dict() and repr of a recorded event are those of
    Event(...) given the same parts: fields named from the producer's tuple, None left out."""
    rec = Recorder(files=None, render=plain_line)
    heard: list[Event] = []
    rec.subscribe(heard.append)
    trace = Trace(rec, "request", "r1", None, "GET", "/")
    values = ("GET", "/x", None, 200, 1.23456, None)
    rec.record("request_end", trace, INFO, "request_end GET /x 200", values, "tb", ts=12.5)
    rec.record("log", None, logging.WARNING, "odd", {"a": 1, "b": None}, ids=("r2", "j2"))
    rec.record("job_start", None, INFO, "job_start", None, target="jobs", thread="worker-1")
    built = [
        Event(
            "request_end", INFO, "flask_diaglog.request", "request_end GET /x 200", "r1", None,
            values, exc="tb", trace=trace, ts=12.5,
        ),
        Event(
            "log", logging.WARNING, "flask_diaglog", "odd", "r2", "j2", {"a": 1, "b": None},
            ts=heard[1].ts,
        ),
        Event(
            "job_start", INFO, "flask_diaglog.job", "job_start", target="jobs", ts=heard[2].ts,
            thread="worker-1",
        ),
    ]  # fmt: skip
    assert [_parts(e) for e in heard] == [_parts(e) for e in built]
    assert heard[0].fields == {"method": "GET", "path": "/x", "status": 200, "duration_ms": 1.23456}
    assert heard[0].to_dict()["duration_ms"] == 1.235
    assert heard[1].fields == {"a": 1, "b": None}  # a mapping is kept as given
    assert heard[2].fields == {} and heard[2].thread == "worker-1"


def test_an_events_fields_and_thread_are_those_of_the_moment_it_was_recorded() -> None:
    """Fields given as a dict are copied when recorded (the producer may change its dict
    later); the thread is the recording thread's, read after that thread has ended."""
    rec = Recorder(files=None, render=plain_line)
    heard: list[Event] = []
    rec.subscribe(heard.append)
    mine = {"name": "report", "n": 1}

    def work() -> None:
        rec.record("log", None, INFO, "from a worker", mine)

    worker = threading.Thread(target=work, name="the-worker")
    worker.start()
    worker.join()
    mine["n"] = 2
    (ev,) = heard
    assert ev.fields == {"name": "report", "n": 1}
    assert ev.thread == "the-worker" and ev.to_dict()["thread"] == "the-worker"
    assert Event("log", INFO, "x", "m").thread == threading.current_thread().name


def test_an_events_fields_are_one_dict_every_reader_shares() -> None:
    """The fields dict is built once: what one subscriber adds, the next one sees; assigning
    fields and thread works as on any attribute."""
    rec = Recorder(files=None, render=plain_line)
    seen: list[dict[str, object]] = []

    def annotate(ev: Event) -> None:
        ev.fields["note"] = "added"

    rec.subscribe(annotate, "annotate")
    rec.subscribe(lambda ev: seen.append(ev.fields), "read")
    rec.record("stage", None, INFO, "stage parse ok", ("parse", 1.0, True))
    assert seen == [{"stage": "parse", "duration_ms": 1.0, "ok": True, "note": "added"}]
    ev = Event("stage", INFO, "x", "m", fields=("parse",))
    ev.fields = {"replaced": True}
    ev.thread = "renamed"
    assert ev.fields == {"replaced": True} and ev.to_dict()["thread"] == "renamed"
