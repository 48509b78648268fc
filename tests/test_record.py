"""The recorder on its own: a failing part of it is counted and reported, never raised."""

from __future__ import annotations

import logging

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
