"""The request hooks write lines without building events while nobody listens (the direct path).

Whatever path a line takes, the files must hold the same text, the registry must see the same
work, and a listener or a fan-out sink must switch the hooks back to events.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, abort

from flask_diaglog import DiagLog, inflight, stage
from flask_diaglog.signals import SIGNALS, request_finished
from flask_diaglog.testing import capture_events

_VOLATILE = [
    (re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}"), "TS"),
    (re.compile(r"req=\S+"), "req=ID"),
    (re.compile(r"\d+\.\d+ms"), "Nms"),
    (re.compile(r"(?<=:)\d+\.\d+(?=,|$| )"), "N"),
    (re.compile(r"line \d+"), "line N"),
]


def _normalised(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        for pattern, repl in _VOLATILE:
            line = pattern.sub(repl, line)
        out.append(line)
    return out


def _app(log_dir: Path, name: str) -> Flask:
    app = Flask(name)
    app.config.update(DIAGLOG_LOG_DIR=str(log_dir), DIAGLOG_REDACT=["token"], DIAGLOG_HANG_AFTER=0)

    @app.get("/")
    def index() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/jobs/<job_id>")
    def job(job_id: str) -> str:
        with stage("validate"), stage("inner"):
            pass
        return job_id

    @app.get("/failing-stage")
    def failing_stage() -> str:
        try:
            with stage("load"):
                raise KeyError("token=abc")
        except KeyError:
            pass
        return "handled"

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("broken")

    @app.get("/gone")
    def gone() -> str:
        abort(410)

    DiagLog(app)
    return app


def _traffic(app: Flask) -> None:
    c = app.test_client()
    assert c.get("/").status_code == 200
    assert c.get("/?token=secret&x=1").status_code == 200
    assert c.post("/jobs/j-7", json={"a": 1}).status_code == 200
    assert c.get("/", headers={"X-Job-ID": "from-header"}).status_code == 200
    assert c.get("/failing-stage").status_code == 200
    assert c.get("/boom").status_code == 500
    assert c.get("/gone").status_code == 410
    assert c.get("/nowhere").status_code == 404
    assert c.get("/", headers={"X-Job-ID": "bad id!"}).status_code == 400


def _files(log_dir: Path) -> dict[str, list[str]]:
    return {
        name: _normalised((log_dir / f"{name}.log").read_text(encoding="utf-8"))
        for name in ("requests", "errors")
    }


def test_direct_and_event_paths_write_the_same_lines(tmp_path: Path) -> None:
    direct_dir, event_dir = tmp_path / "direct", tmp_path / "event"
    direct_app = _app(direct_dir, "direct")
    assert direct_app.extensions["diaglog"].dispatch.quiet
    _traffic(direct_app)

    event_app = _app(event_dir, "event")
    heard: list[Any] = []
    with (
        request_finished.connected_to(lambda sender, event: heard.append(event), event_app),
        capture_events(event_app) as events,  # every signal has a receiver: all events
    ):
        _traffic(event_app)
    assert len(heard) == 9
    assert events.kinds.count("stage") == 3

    direct, evented = _files(direct_dir), _files(event_dir)
    assert direct == evented
    # And the lines are the documented ones (the comparison alone would pass if both were empty).
    assert any("request_start POST /jobs/j-7" in line for line in direct["requests"])
    assert any("job=j-7 | stage validate.inner Nms ok" in line for line in direct["requests"])
    assert any("stage load Nms failed: KeyError" in line for line in direct["requests"])
    assert any(
        "request_end POST /jobs/j-7 200 Nms stages=validate.inner:N,validate:N" in line
        for line in direct["requests"]
    )
    assert any("/?token=[REDACTED]&x=1" in line for line in direct["requests"]), direct
    assert any("job=from-header | request_end GET / 200" in line for line in direct["requests"])
    assert any("request_end GET /boom 500" in line for line in direct["requests"])
    assert sum("request_start" in line for line in direct["requests"]) == 9
    assert sum("request_end" in line for line in direct["requests"]) == 9
    assert any("request_error GET /boom RuntimeError: broken" in line for line in direct["errors"])
    assert inflight(direct_app) == [] and inflight(event_app) == []


def test_listeners_and_sinks_turn_the_direct_path_off(tmp_path: Path) -> None:
    app = _app(tmp_path / "logs", "switch")
    state = app.extensions["diaglog"]
    seen: list[str] = []

    def on_end(sender: Flask, event: Any) -> None:
        seen.append(event.msg)

    client = app.test_client()
    client.get("/")
    assert seen == []
    with request_finished.connected_to(on_end, app):
        client.get("/")
    assert len(seen) == 1 and seen[0].startswith("request_end GET / 200")
    client.get("/")
    assert len(seen) == 1

    class Sink:
        sink_name = "mine"

        def __call__(self, event: Any) -> None:
            seen.append(event.kind)

    sink = Sink()
    state.dispatch.add(sink)
    assert not state.dispatch.quiet
    client.get("/")
    assert seen[1:] == ["request_start", "request_end"]
    state.dispatch.remove(sink)
    assert state.dispatch.quiet
    state.dispatch.remove(state.files)  # the direct path stands in for the files, not without
    assert not state.dispatch.quiet
    state.dispatch.add(state.files, primary=True)
    assert state.dispatch.quiet
    ends = (tmp_path / "logs" / "requests.log").read_text().count("request_end GET / 200")
    assert ends == 4


def test_json_files_and_the_console_always_take_events(tmp_path: Path) -> None:
    assert all(not sig.receivers for sig in SIGNALS.values())  # no receiver leaked in here
    plain = _app(tmp_path / "plain", "plainfmt").extensions["diaglog"]
    assert plain.direct and plain.dispatch.quiet
    configs: dict[str, dict[str, Any]] = {
        "jsonfmt": {"DIAGLOG_FORMAT": "json"},
        "console": {"DIAGLOG_CONSOLE": True},
    }
    for name, config in configs.items():
        app = Flask(name)
        app.config.update(DIAGLOG_LOG_DIR=str(tmp_path / name), **config)
        DiagLog(app)
        state = app.extensions["diaglog"]
        assert not (state.direct and state.dispatch.quiet), name
        app.test_client().get("/nowhere")
        assert "request_end GET /nowhere 404" in (tmp_path / name / "requests.log").read_text()


def test_failing_direct_write_is_counted_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _app(tmp_path / "logs", "failing")
    state = app.extensions["diaglog"]

    def broken(*args: Any) -> bytes:
        raise ValueError("renderer bug")

    monkeypatch.setattr("flask_diaglog.extension.plain_line", broken)
    client = app.test_client()
    assert client.get("/").status_code == 200
    assert client.get("/").status_code == 200
    assert state.stats()["sink_failures"] == {"files": 4}
    assert "flask-diaglog sink files failed" in (tmp_path / "logs" / "errors.log").read_text()


def test_failing_registry_is_counted_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _app(tmp_path / "logs", "failingreg")
    state = app.extensions["diaglog"]
    registry = state.extras["inflight"]

    def broken(trace: Any, name: Any = None) -> None:
        raise RuntimeError("registry bug")

    monkeypatch.setattr(registry, "add", broken)
    assert app.test_client().get("/").status_code == 200
    assert state.stats()["sink_failures"] == {"inflight": 1}
    text = (tmp_path / "logs" / "requests.log").read_text()
    assert "request_start GET /" in text and "request_end GET / 200" in text
