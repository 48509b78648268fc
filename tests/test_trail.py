"""The request trail: start, stage, end and error lines, in the files actually written."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask, Response, stream_with_context

from flask_diaglog import current_job_id, current_request_id, guard_job, stage
from tests.conftest import Logs

PLAIN = re.compile(
    r"^(?P<date>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) \| (?P<level>[A-Z]+) \| "
    r"(?P<logger>[^|]+) \| "
    r"req=(?P<req>\S+) job=(?P<job>\S+) \| (?P<msg>.*)$"
)


def test_start_line_is_written_before_the_view_runs(
    make_app: Callable[..., Flask], logs: object
) -> None:
    """When the view runs, requests.log already holds its start line with all its fields."""
    app = make_app()
    seen: list[str] = []

    @app.post("/jobs/<job_id>/run")
    def run(job_id: str) -> str:
        seen.append(logs.text("requests"))  # type: ignore[attr-defined]
        return "ok"

    app.test_client().post(
        "/jobs/j-1/run?x=1", json={"a": 1}, headers={"X-Request-ID": "req-1", "X-Job-ID": "j-1"}
    )
    assert len(seen) == 1
    start = seen[0].splitlines()
    assert len(start) == 1
    m = PLAIN.match(start[0])
    assert m is not None, start[0]
    assert m["level"] == "INFO"
    assert m["logger"] == "flask_diaglog.request"
    assert m["req"] == "req-1" and m["job"] == "j-1"
    assert m["msg"] == (
        "request_start POST /jobs/j-1/run?x=1 client=127.0.0.1 type=application/json testing=true"
    )


def test_stage_and_end_lines(make_app: Callable[..., Flask], logs: object) -> None:
    """Each stage is one line with its duration; the end line has status, duration and stages."""
    app = make_app()

    @app.get("/work")
    def work() -> str:
        with stage("parse"):
            pass
        with stage("render"):
            pass
        return "done"

    app.test_client().get("/work", headers={"X-Request-ID": "abc"})
    lines = logs.lines("requests")  # type: ignore[attr-defined]
    msgs = [PLAIN.match(line)["msg"] for line in lines]  # type: ignore[index]
    assert msgs[0].startswith("request_start GET /work ")
    assert re.fullmatch(r"stage parse \d+\.\d\dms ok", msgs[1])
    assert re.fullmatch(r"stage render \d+\.\d\dms ok", msgs[2])
    assert re.fullmatch(
        r"request_end GET /work 200 \d+\.\d\dms stages=parse:\d+\.\d\d,render:\d+\.\d\d", msgs[3]
    )
    assert len(msgs) == 4
    assert all(PLAIN.match(line)["req"] == "abc" for line in lines)  # type: ignore[index]


def test_json_lines_have_the_documented_keys(make_app: Callable[..., Flask], logs: object) -> None:
    """JSON lines carry ts with ms and offset, level, event, ids, status, duration and stages."""
    app = make_app({"DIAGLOG_FORMAT": "json"})

    @app.post("/g/<job_id>")
    def gen(job_id: str) -> tuple[str, int]:
        with stage("validate"):
            pass
        return "", 202

    app.test_client().post("/g/job-7", headers={"X-Request-ID": "r-7"})
    start, st, end = logs.json("requests")  # type: ignore[attr-defined]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", start["ts"])
    assert start["event"] == "request_start" and start["level"] == "INFO"
    # The start line is written before Flask matches the URL: the URL's job id comes after it.
    assert start["request_id"] == "r-7" and "job_id" not in start
    assert st["job_id"] == end["job_id"] == "job-7"
    assert start["method"] == "POST" and start["path"] == "/g/job-7"
    assert start["client"] == "127.0.0.1" and start["testing"] is True
    assert isinstance(start["pid"], int) and start["thread"]
    assert "status" not in start and "exc" not in start
    assert st["event"] == "stage" and st["stage"] == "validate" and st["ok"] is True
    assert isinstance(st["duration_ms"], float)
    assert end["event"] == "request_end" and end["status"] == 202
    assert set(end["stages"]) == {"validate"}
    assert end["duration_ms"] >= st["duration_ms"]


def test_unhandled_exception_writes_error_line_with_traceback(
    make_app: Callable[..., Flask], logs: object
) -> None:
    """An exception gives an error line with the traceback in errors.log and an end line 500."""
    app = make_app({"TESTING": False, "DIAGLOG_FORMAT": "json"})

    @app.get("/boom")
    def boom() -> str:
        raise ValueError("it broke")

    r = app.test_client().get("/boom")
    assert r.status_code == 500
    errors = logs.json("errors")  # type: ignore[attr-defined]
    assert [e["event"] for e in errors] == ["request_error"]
    assert errors[0]["error"] == "ValueError: it broke"
    assert "Traceback (most recent call last)" in errors[0]["exc"]
    assert 'raise ValueError("it broke")' in errors[0]["exc"]
    kinds = [(e["event"], e.get("status")) for e in logs.json("requests")]  # type: ignore[attr-defined]
    assert kinds == [("request_start", None), ("request_error", None), ("request_end", 500)]


def test_propagated_exception_in_testing_still_ends_the_trail(
    make_app: Callable[..., Flask], logs: object
) -> None:
    """With TESTING (exceptions propagate), the error and a 500 end line are still written."""
    app = make_app({"DIAGLOG_FORMAT": "json"})

    @app.get("/boom")
    def boom() -> str:
        raise KeyError("missing")

    with pytest.raises(KeyError):
        app.test_client().get("/boom")
    kinds = [(e["event"], e.get("status")) for e in logs.json("requests")]  # type: ignore[attr-defined]
    assert kinds == [("request_start", None), ("request_error", None), ("request_end", 500)]
    assert len(logs.json("errors")) == 1  # type: ignore[attr-defined]


def test_streamed_response_ends_when_closed(make_app: Callable[..., Flask], logs: object) -> None:
    """A streamed body gets its end line at close, with the streamed duration and its stages."""
    app = make_app({"DIAGLOG_FORMAT": "json"})

    @app.get("/stream")
    def streamed() -> Response:
        @stream_with_context
        def gen() -> Iterator[str]:
            for i in range(3):
                with stage(f"chunk{i}"):
                    yield f"{i}\n"
            assert current_request_id() == "s-1"

        return Response(gen(), mimetype="text/plain")

    r = app.test_client().get("/stream", headers={"X-Request-ID": "s-1"})
    assert "request_end" not in logs.text("requests")  # type: ignore[attr-defined]
    assert r.get_data() == b"0\n1\n2\n"
    r.close()
    end = logs.events("requests", "request_end")  # type: ignore[attr-defined]
    assert len(end) == 1
    assert end[0]["status"] == 200 and end[0]["request_id"] == "s-1"
    assert set(end[0]["stages"]) == {"chunk0", "chunk1", "chunk2"}
    assert "aborted" not in end[0]


@pytest.mark.parametrize("context", [False, True], ids=["plain", "stream_with_context"])
def test_a_generator_with_its_own_content_length_is_streamed(
    make_app: Callable[..., Flask], logs: object, context: bool
) -> None:
    """A generator body is streamed even when the view gives its length (a proxied download of
    known size): the end line waits for its close, the generator's lines carry the request's
    ids, and its job stays held meanwhile."""
    app = make_app({"DIAGLOG_FORMAT": "json"})

    @app.get("/jobs/<job_id>/download")
    @guard_job
    def download(job_id: str) -> Response:
        def gen() -> Iterator[bytes]:
            with stage("render"):
                logging.getLogger("app.download").warning("chunk for %s", job_id)
                yield b"12345"
                yield b"67890"

        body = stream_with_context(gen()) if context else gen()
        return Response(body, headers={"Content-Length": "10"})

    client = app.test_client()
    r = client.get("/jobs/j1/download", headers={"X-Request-ID": "dl-1"}, buffered=False)
    chunks = iter(r.response)
    first = next(chunks)
    ends = logs.events("requests", "request_end")  # type: ignore[attr-defined]
    assert [e for e in ends if e["request_id"] == "dl-1"] == []
    assert client.get("/jobs/j1/download").status_code == 409
    assert first + b"".join(chunks) == b"1234567890"
    r.close()
    ends = logs.events("requests", "request_end")  # type: ignore[attr-defined]
    mine = [e for e in ends if e["request_id"] == "dl-1"]
    assert len(mine) == 1 and mine[0]["stages"].keys() == {"render"}, mine
    logged = logs.events("requests", "log")  # type: ignore[attr-defined]
    assert [(e["request_id"], e["job_id"], e["msg"]) for e in logged] == [
        ("dl-1", "j1", "chunk for j1")
    ]
    assert client.get("/jobs/j1/download").status_code == 200


def test_stream_closed_early_is_marked_aborted(
    make_app: Callable[..., Flask], logs: object
) -> None:
    """A stream closed before its end still gets its end line, marked aborted."""
    app = make_app({"DIAGLOG_FORMAT": "json"})

    @app.get("/stream")
    def streamed() -> Response:
        return Response((f"{i}\n" for i in range(1000)), mimetype="text/plain")

    r = app.test_client().get("/stream", buffered=False)
    next(iter(r.response))
    r.close()
    end = logs.events("requests", "request_end")  # type: ignore[attr-defined]
    assert len(end) == 1 and end[0]["aborted"] is True


@pytest.mark.parametrize("raw", ["//healthz", "///healthz", "//static/app.css"])
def test_an_excluded_path_written_with_more_slashes_is_excluded_too(
    make_app: Callable[..., Flask], logs: object, raw: str
) -> None:
    """A server may pass ``//healthz`` on as it came (gunicorn does); Flask routes it as
    ``/healthz``, and diaglog excludes it as ``/healthz``: no line, no header."""
    app = make_app({"DIAGLOG_EXCLUDE": "/healthz,/static"})
    app.add_url_rule("/healthz", "healthz", lambda: "ok")
    r = app.test_client().get("/", environ_overrides={"PATH_INFO": raw})
    assert "X-Request-ID" not in r.headers
    assert logs.text("requests") == ""  # type: ignore[attr-defined]


def test_exclude_logs_nothing_for_matching_paths(
    make_app: Callable[..., Flask], logs: object
) -> None:
    """DIAGLOG_EXCLUDE prefixes produce no lines and no diaglog headers."""
    app = make_app({"DIAGLOG_EXCLUDE": "/healthz,/static"})
    app.add_url_rule("/healthz", "healthz", lambda: "ok")
    app.add_url_rule("/api", "api", lambda: "ok")
    client = app.test_client()
    r = client.get("/healthz")
    assert "X-Request-ID" not in r.headers
    client.get("/static/app.css")
    client.get("/api")
    text = logs.text("requests")  # type: ignore[attr-defined]
    assert "/healthz" not in text and "/static" not in text
    assert text.count("request_end GET /api 200") == 1


def test_app_logging_carries_ids_and_errors_go_to_errors_log(
    make_app: Callable[..., Flask], logs: object
) -> None:
    """app.logger and module-logger records carry both ids; ERROR also goes to errors.log."""
    app = make_app()
    module_logger = logging.getLogger(f"{app.import_name.split('.')[0]}.pipeline")

    @app.post("/jobs/<job_id>")
    def job(job_id: str) -> str:
        app.logger.info("app line %s", current_job_id())
        module_logger.info("module line")
        app.logger.error("bad thing")
        return "ok"

    app.test_client().post("/jobs/J9", headers={"X-Request-ID": "R9"})
    lines = [PLAIN.match(x) for x in logs.lines("requests")]  # type: ignore[attr-defined]
    app_lines = [m for m in lines if m and m["logger"] != "flask_diaglog.request"]
    assert [(m["logger"], m["msg"]) for m in app_lines] == [
        (app.logger.name, "app line J9"),
        (module_logger.name, "module line"),
        (app.logger.name, "bad thing"),
    ]
    assert all(m["req"] == "R9" and m["job"] == "J9" for m in app_lines)
    errors = logs.lines("errors")  # type: ignore[attr-defined]
    assert len(errors) == 1 and errors[0].endswith("| bad thing")


def test_root_logger_gets_no_handler(make_app: Callable[..., Flask]) -> None:
    """No basicConfig and no handler on the root logger; DIAGLOG_ADJUST_LEVELS=False leaves its
    level alone too."""
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    app = make_app({"DIAGLOG_ADJUST_LEVELS": False})
    assert (list(root.handlers), root.level) == before and app


def test_root_capture_when_asked(make_app: Callable[..., Flask], logs: object) -> None:
    """DIAGLOG_LOGGERS=root captures records of any logger."""
    app = make_app({"DIAGLOG_LOGGERS": "root"})
    other = logging.getLogger("some.library")
    other.setLevel(logging.INFO)

    @app.get("/")
    def index() -> str:
        other.info("from a library")
        return "ok"

    app.test_client().get("/")
    assert "| some.library | " in logs.text("requests")  # type: ignore[attr-defined]


def test_crlf_and_invalid_utf8_never_split_a_record(
    make_app: Callable[..., Flask], logs: object
) -> None:
    """CR/LF in path, header or message and bytes that are not UTF-8 stay inside one line."""
    app = make_app()

    @app.get("/")
    def index() -> str:
        app.logger.warning("line one\r\nline two\u2028three \udcff")
        return "ok"

    client = app.test_client()
    client.get(
        "/a%0d%0aINJECTED%20|%20INFO/%ff%fe",
        environ_overrides={"HTTP_X_REQUEST_ID": "bad\r\nid", "CONTENT_TYPE": "text/x\r\ny"},
    )
    client.get("/")
    raw = logs.path("requests").read_bytes()  # type: ignore[attr-defined]
    raw.decode("utf-8")  # the file is valid UTF-8
    lines = raw.split(b"\n")
    assert lines[-1] == b""
    lines = lines[:-1]
    assert len(lines) == 5  # start + end of the 404, start + app line + end of "/"
    for line in lines:
        assert PLAIN.match(line.decode()), line
    assert b"GET /a\\r\\nINJECTED | INFO/" in lines[0]
    assert b"type=text/x\\r\\ny" in lines[0]
    assert b"req=bad" not in raw  # an invalid X-Request-ID is replaced, never echoed
    assert b"line one\\r\\nline two\\u2028three \\udcff" in lines[3]


def test_crlf_in_json_format(make_app: Callable[..., Flask], logs: object) -> None:
    """JSON lines stay one line each and round-trip the original text."""
    app = make_app({"DIAGLOG_FORMAT": "json"})

    @app.get("/")
    def index() -> str:
        app.logger.info("a\nb\u2029c")
        return "ok"

    app.test_client().get("/")
    records = logs.json("requests")  # type: ignore[attr-defined]
    assert len(records) == 3
    assert records[1]["msg"] == "a\nb\u2029c"
    assert "\u2029" not in logs.text("requests")  # type: ignore[attr-defined]


def test_each_line_is_flushed_before_the_call_returns(
    make_app: Callable[..., Flask], log_dir: object
) -> None:
    """A line is in the file (read through a separate descriptor) as soon as logging returns."""
    app = make_app()
    seen = []

    @app.get("/")
    def index() -> str:
        app.logger.info("marker-123")
        with open(f"{log_dir}/requests.log", encoding="utf-8") as fh:
            seen.append(fh.read())
        return "ok"

    app.test_client().get("/")
    assert "marker-123" in seen[0]


def test_json_round_trips_non_ascii(make_app: Callable[..., Flask], logs: object) -> None:
    """Non-ASCII text is written as UTF-8, not escaped, and parses back."""
    app = make_app({"DIAGLOG_FORMAT": "json"})

    @app.get("/")
    def index() -> str:
        app.logger.info("modèle 3D ✓")
        return "ok"

    app.test_client().get("/")
    assert "modèle 3D ✓" in logs.text("requests")  # type: ignore[attr-defined]
    assert json.loads(logs.lines("requests")[1])["msg"] == "modèle 3D ✓"  # type: ignore[attr-defined]


def test_the_end_line_names_the_matched_route(make_app: Callable[..., Flask], logs: Logs) -> None:
    """The URL rule is on the end line when it differs from the path; ``route=-`` on a 404."""
    app = make_app()
    app.add_url_rule("/items/<int:item>", "item", lambda item: "one")
    app.add_url_rule("/ok", "ok", lambda: "ok")
    client = app.test_client()
    client.get("/items/7")
    client.get("/ok")
    client.get("/nowhere")
    ends = [line.split(" | ")[-1] for line in logs.lines("requests") if "request_end" in line]
    assert (
        ends[0].startswith("request_end GET /items/7 200 ") and "route=/items/<int:item>" in ends[0]
    )
    assert "route=" not in ends[1]
    assert ends[2].startswith("request_end GET /nowhere 404 ") and ends[2].endswith("route=-")


@pytest.mark.parametrize("how", ["guard_job", "DIAGLOG_STRICT_IDS"])
def test_a_view_that_settles_its_job_id_early_still_names_its_route(
    make_app: Callable[..., Flask], logs: Logs, how: str
) -> None:
    """A guarded view, or strict ids, take the job id before the view runs: the end line still
    names the matched rule, also when the id is refused (400) or the view answers 404 itself."""
    app = make_app({"DIAGLOG_STRICT_IDS": how == "DIAGLOG_STRICT_IDS"})

    def view(job_id: str) -> tuple[str, int]:
        return ("made", 200) if job_id != "gone" else ("no such job", 404)

    app.add_url_rule(
        "/jobs/<job_id>/make", "make", guard_job(view) if how == "guard_job" else view,
        methods=["POST"],
    )  # fmt: skip
    client = app.test_client()
    assert client.post("/jobs/j1/make").status_code == 200
    assert client.post("/jobs/gone/make").status_code == 404
    assert client.post("/jobs/bad%20id/make").status_code == 400
    ends = [line.split(" | ")[-1] for line in logs.lines("requests") if "request_end" in line]
    assert len(ends) == 3
    for end in ends:
        assert "route=/jobs/<job_id>/make" in end.split(), end


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/_diaglog", False),
        ("/_diaglog/api/state", False),
        ("/_diaglog-export", True),
        ("/_diaglogx/a", True),
        ("/health", False),
        ("/healthz", True),
    ],
)
def test_exclusions_match_whole_path_segments(
    make_app: Callable[..., Flask], logs: Logs, path: str, logged: bool
) -> None:
    app = make_app({"DIAGLOG_EXCLUDE": "/health", "DIAGLOG_DASHBOARD": True})
    app.add_url_rule(path, "view", lambda: "ok") if not path.startswith("/_diaglog/") else None
    app.test_client().get(path)
    assert (f"request_start GET {path} " in logs.text("requests")) is logged


@pytest.mark.parametrize("first", ["parent", "child"])
def test_json_lines_of_a_forked_child_carry_its_own_pid(tmp_path: Path, first: str) -> None:
    """A worker forked from a process that wrote JSON lines already (``parent``), or none yet
    (``child``), writes its own pid, also from an after-fork hook registered after
    ``DiagLog(app)`` (diaglog's fork hooks come with it, not with the import). Run in a fresh
    interpreter, which forks once."""
    script = f"""
import json, os, sys
from flask import Flask
from flask_diaglog import DiagLog
app = Flask("forked")
app.config.update(DIAGLOG_LOG_DIR={str(tmp_path)!r}, DIAGLOG_FORMAT="json")
DiagLog(app)
os.register_at_fork(after_in_child=lambda: app.logger.warning("forked"))
app.get("/")(lambda: "ok")
if {first == "parent"}:
    app.test_client().get("/")
pid = os.fork()
if pid == 0:
    app.test_client().get("/")
    os._exit(0)
os.waitpid(pid, 0)
app.test_client().get("/")
print(pid)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    child = int(out.stdout)
    lines = [json.loads(x) for x in (tmp_path / "requests.log").read_text().splitlines()]
    pids = [x["pid"] for x in lines if x["event"] == "request_start"]
    parent = pids[-1]
    assert parent != child
    assert pids == ([parent, child, parent] if first == "parent" else [child, parent])
    assert [x["pid"] for x in lines if x["msg"] == "forked"] == [child]
