"""One record is one line for every reader, whatever a client or the app puts in it.

A property-based test drives arbitrary Unicode and arbitrary bytes through a real app (paths,
headers, query strings, request ids, job ids, bodies, log messages, logger names, exception
messages and stage names), in both layouts, and splits what was written with every common
splitter: ``str.splitlines()``, text-mode ``io`` iteration, ``grep -c ''`` (bytes split on
``b"\\n"``), and checks that no raw terminal control (C0, DEL, C1, U+2028, U+2029) is left for
``less``.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest
from flask import Flask, request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_diaglog import stage
from flask_diaglog.files.render import split_plain
from flask_diaglog.logread import read_records
from flask_diaglog.testing import capture_events
from flask_diaglog.trail import ERRORS_FROM

FILES = ("requests", "jobs", "errors")
#: Bidirectional controls: they reorder what a terminal or a page shows after them.
BIDI = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
#: What no line may carry raw: C0 (the line feed ends a line), DEL, C1, U+2028, U+2029, BIDI.
RAW_CONTROL = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)
#: Every character that some reader takes as a line break or a terminal control, or that
#: reorders the text after it.
HOSTILE_CHARS = [chr(c) for c in (*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029, *BIDI)]
HOSTILE_BYTES = [
    b"\r\n", b"\n", b"\r", b"\x1b[2J", b"\x1b]0;x\x07", b"\x85", b"\x9b", b"\xc2\x85",
    b"\xc2\x9b", b"\xe2\x80\xa8", b"\xe2\x80\xa9", b"\x00", b"\x7f", b"\xff", b"%0A", b"%C2%85",
]  # fmt: skip

hostile_text = st.lists(
    st.one_of(st.text(max_size=8), st.sampled_from(HOSTILE_CHARS)), max_size=12
).map("".join)
hostile_bytes = st.lists(
    st.one_of(st.binary(max_size=8), st.sampled_from(HOSTILE_BYTES)), max_size=12
).map(b"".join)


def latin1(data: bytes) -> str:
    """Bytes as a WSGI server hands them to the app in the environ."""
    return data.decode("latin-1")


@dataclass
class Hostile:
    """What one request carries."""

    path: bytes
    query: bytes
    header_bytes: bytes
    header_text: str
    request_id: bytes
    job_id: bytes
    body: bytes
    message: str
    logger: str
    error: str
    stage_name: str


hostile = st.builds(
    Hostile,
    path=hostile_bytes,
    query=hostile_bytes,
    header_bytes=hostile_bytes,
    header_text=hostile_text,
    request_id=hostile_bytes,
    job_id=hostile_bytes,
    body=st.one_of(
        hostile_bytes,
        hostile_text.map(lambda t: json.dumps({"v": t, t: [t]}, ensure_ascii=False).encode()),
    ),
    message=hostile_text,
    logger=hostile_text,
    error=hostile_text,
    stage_name=hostile_text.map(lambda t: t or "s"),
)


def _app(make_app: Callable[..., Flask], fmt: str) -> tuple[Flask, list[Hostile]]:
    app = make_app({"TESTING": False, "DIAGLOG_FORMAT": fmt, "DIAGLOG_MAX_BYTES": 0})
    current: list[Hostile] = []

    @app.route("/", defaults={"p": ""}, methods=["GET", "POST"])
    @app.route("/<path:p>", methods=["GET", "POST"])
    def view(p: str) -> str:
        h = current[0]
        request.get_json(silent=True)  # the body is in memory: the error line shows it
        logging.getLogger(f"{app.logger.name}.{h.logger}").warning("%s", h.message)
        app.logger.warning("headers: %s", request.headers)
        with stage(h.stage_name), stage(h.stage_name):
            raise RuntimeError(h.error)

    return app, current


def _send(app: Flask, h: Hostile) -> None:
    app.test_client().open(
        "/",
        method="POST",
        data=h.body,
        content_type="application/json",
        environ_overrides={
            "PATH_INFO": "/" + latin1(h.path),
            "QUERY_STRING": latin1(h.query),
            "HTTP_X_FUZZ": latin1(h.header_bytes),
            "HTTP_X_FUZZ_TEXT": h.header_text,
            "HTTP_X_REQUEST_ID": latin1(h.request_id),
            "HTTP_X_JOB_ID": latin1(h.job_id),
        },
    )


def _check_split(data: bytes, n: int, fmt: str, msgs: list[str]) -> None:
    """``data`` (what one request appended to a file) is exactly ``n`` whole records."""
    # grep -c '': lines are what ends in b"\n"; the last record ends in one too.
    assert data.count(b"\n") == n
    assert data.endswith(b"\n") or n == 0
    text = data.decode("utf-8")  # strict: every line is valid UTF-8
    assert RAW_CONTROL.search(text) is None  # nothing for less or a terminal to act on
    lines = text.splitlines()
    assert len(lines) == n
    assert len(list(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", newline=None))) == n
    for line in lines:
        if fmt == "json":
            assert isinstance(json.loads(line), dict)
        else:
            assert split_plain(line) is not None, line
    if fmt == "json":  # what was written reads back as what was recorded
        assert [json.loads(line)["msg"] for line in lines] == msgs


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_every_file_splits_into_the_records_written(
    make_app: Callable[..., Flask], log_dir: Path, fmt: str
) -> None:
    """Whatever a request and the app put in a record, each file holds one line per record for
    every splitter, and no raw line break or terminal control."""
    app, current = _app(make_app, fmt)
    level = app.extensions["diaglog"].settings.level
    written = dict.fromkeys(FILES, 0)

    @settings(
        max_examples=300,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(h=hostile)
    def one_request(h: Hostile) -> None:
        before = {n: _size(log_dir / f"{n}.log") for n in FILES}
        current[:] = [h]
        with capture_events(app) as events:
            _send(app, h)
        expected: dict[str, list[str]] = {n: [] for n in FILES}
        for ev in events:
            if ev.level >= level:
                expected[ev.target].append(ev.msg)
                if ev.level >= ERRORS_FROM:
                    expected["errors"].append(ev.msg)
        assert expected["requests"], "the request was recorded"
        for name in FILES:
            path = log_dir / f"{name}.log"
            data = path.read_bytes()[before[name] :] if path.exists() else b""
            _check_split(data, len(expected[name]), fmt, expected[name])
            written[name] += len(expected[name])

    one_request()
    # The whole files, read the way most tools read them.
    for name in FILES:
        path = log_dir / f"{name}.log"
        if not written[name]:
            continue
        with open(path, encoding="utf-8", newline=None) as f:
            assert sum(1 for _ in f) == written[name]
        assert len(path.read_text(encoding="utf-8").splitlines()) == written[name]


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def test_a_lone_surrogate_is_written_as_its_escape_in_json_lines(
    make_app: Callable[..., Flask], log_dir: Path
) -> None:
    """A lone surrogate a client sends (``{"name": "\\ud800"}``, logged by the view) or a stage
    name holds is written as the text ``\\udXXX``, as plain lines write it: every JSON line reads
    back, with any JSON parser, as valid Unicode."""
    app = make_app({"TESTING": False, "DIAGLOG_FORMAT": "json"})

    @app.post("/n")
    def view() -> str:
        app.logger.warning("name %s", request.get_json()["name"])
        with stage("s\udc9bx"):
            return "ok"

    app.test_client().post("/n", data='{"name": "\\ud800"}', content_type="application/json")
    lines = (log_dir / "requests.log").read_bytes().decode("utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    for text in (json.dumps(r, ensure_ascii=False) for r in records):
        text.encode("utf-8")  # strict: no surrogate came back from a JSON escape
    assert [r["msg"] for r in records if r["event"] == "log"] == ["name \\ud800"]
    assert [r["stage"] for r in records if r["event"] == "stage"] == ["s\\udc9bx"]


def _records(log_dir: Path, n: int) -> list[str]:
    """The ``n`` lines of ``requests.log``: no raw control, each line one record."""
    data = (log_dir / "requests.log").read_bytes()
    text = data.decode()
    assert RAW_CONTROL.search(text) is None
    lines = text.splitlines()
    assert len(lines) == data.count(b"\n") == n
    return lines


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_a_stage_line_shows_its_name_and_error_escaped_as_any_line_does(
    make_app: Callable[..., Flask], log_dir: Path, fmt: str
) -> None:
    """A stage's message is printable as built (the plain layout skips its check): the name's
    and the error's line breaks and controls come out escaped, the line stays one record, and
    the name reads back as the text shown."""
    app = make_app({"TESTING": False, "DIAGLOG_FORMAT": fmt})
    name = "a\nb\x1b[31m\u202ec\x85"

    @app.get("/")
    def view() -> str:
        with stage(name):
            pass
        with suppress(ValueError), stage("bad"):
            raise ValueError("x\ny\x1b[2J\u2028z")
        return "ok"

    app.test_client().get("/")
    lines = _records(log_dir, 4)
    if fmt == "json":
        msgs = [json.loads(line)["msg"] for line in lines]
        assert json.loads(lines[1])["stage"] == name  # the field keeps the name as it was
    else:
        msgs = [split_plain(line)["msg"] for line in lines]  # type: ignore[index]
    shown = "a%0Ab\\x1b[31m\\u202ec%C2%85"
    assert msgs[1].startswith(f"stage {shown} ") and msgs[1].endswith("ms ok")
    assert msgs[2].endswith("ms failed: ValueError: x\\ny\\x1b[2J\\u2028z")
    assert f" stages={shown}:" in msgs[3]
    stages = [r for r in read_records(str(log_dir), ["requests"]) if r.event == "stage"]
    assert stages[0].data["stage"] == (name if fmt == "json" else unquote(shown))


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_an_end_line_shows_the_clients_path_route_and_job_id_escaped_as_any_line_does(
    make_app: Callable[..., Flask], log_dir: Path, fmt: str
) -> None:
    """An end line is printable as built too: the client's method and path, the rule and an
    invalid job id come out escaped, with the stages word after them, in one record."""
    app = make_app({"TESTING": False, "DIAGLOG_FORMAT": fmt})

    @app.get("/r\u2028ule/<p>")
    def view(p: str) -> str:
        with stage("work"):
            pass
        return "ok"

    app.test_client().get(
        "/r%E2%80%A8ule/a%0Ab%1B%5B2J%C2%85",
        headers={"X-Job-ID": "j\x7fob"},
    )
    lines = _records(log_dir, 3)
    if fmt == "json":
        end = json.loads(lines[2])
        msg = end["msg"]
        assert end["path"] == "/r\u2028ule/a\nb\x1b[2J\x85"  # the fields keep the text as it was
        assert end["route"] == "/r\u2028ule/<p>"
        assert end["bad_job_id"] == "j\x7fob"
    else:
        msg = split_plain(lines[2])["msg"]  # type: ignore[index]
    assert msg.startswith("request_end GET /r\\u2028ule/a\\nb\\x1b[2J\\x85 200 ")
    assert " route=/r\\u2028ule/<p> stages=work:" in msg
    assert msg.endswith(' bad_job_id="j\\u007fob"')  # JSON-quoted
