"""Setup: app factories, repeated init_app, several apps, no side effects at import."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from flask_diaglog import DiagLog, inflight, stats


def test_import_has_no_side_effects() -> None:
    """Importing the package adds no handlers, starts no threads and creates no files."""
    code = r"""
import json, logging, os, threading
before_files = set(os.listdir("."))
before_threads = threading.active_count()
import flask_diaglog, flask_diaglog.pytest_plugin
handlers = {name: len(lg.handlers) for name, lg in logging.Logger.manager.loggerDict.items()
            if isinstance(lg, logging.Logger) and lg.handlers}
print(json.dumps({"root": len(logging.getLogger().handlers), "handlers": handlers,
                  "threads": threading.active_count() - before_threads,
                  "new_files": sorted(set(os.listdir(".")) - before_files)}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path.cwd()
    )
    result = json.loads(out.stdout)
    assert result == {"root": 0, "handlers": {}, "threads": 0, "new_files": []}


def test_factory_pattern(tmp_path: Path) -> None:
    """DiagLog() then init_app(app) works like DiagLog(app)."""
    diaglog = DiagLog()
    app = Flask(__name__)
    app.config.update(DIAGLOG_LOG_DIR=str(tmp_path))
    diaglog.init_app(app)
    app.add_url_rule("/", view_func=lambda: "ok")
    r = app.test_client().get("/")
    assert r.headers["X-Request-ID"]
    assert "request_end GET / 200" in (tmp_path / "requests.log").read_text()
    with app.app_context():  # work spawned outside a request is logged only by the app's DiagLog
        diaglog.spawn(lambda: None).join()
    assert "job_start" in (tmp_path / "jobs.log").read_text()


def test_second_init_app_same_instance_does_not_duplicate_lines(
    make_app: Callable[..., Flask], logs: object
) -> None:
    """Calling init_app twice with the same instance is harmless: every line appears once."""
    app = make_app(init=False)
    diaglog = DiagLog(app)
    diaglog.init_app(app)

    @app.get("/")
    def index() -> str:
        app.logger.info("only once")
        return "ok"

    app.test_client().get("/")
    text = logs.text("requests")  # type: ignore[attr-defined]
    assert text.count("request_start") == 1
    assert text.count("request_end") == 1
    assert text.count("only once") == 1


def test_second_instance_on_same_app_is_refused(make_app: Callable[..., Flask]) -> None:
    """Registering a different DiagLog on the same app raises a RuntimeError that says why."""
    app = make_app()
    with pytest.raises(RuntimeError, match="already registered"):
        DiagLog(app)


def test_two_apps_keep_separate_state_and_files(tmp_path: Path) -> None:
    """Two apps in one process write to their own directories with their own settings."""
    shared = DiagLog()
    apps = []
    for name in ("one", "two"):
        app = Flask(f"app_{name}")
        app.config.update(
            DIAGLOG_LOG_DIR=str(tmp_path / name),
            DIAGLOG_FORMAT="json" if name == "two" else "plain",
        )
        shared.init_app(app)
        app.add_url_rule("/", view_func=lambda n=name: n)
        apps.append(app)
    apps[0].test_client().get("/")
    apps[1].test_client().get("/")
    apps[1].test_client().get("/")
    one = (tmp_path / "one" / "requests.log").read_text().splitlines()
    two = (tmp_path / "two" / "requests.log").read_text().splitlines()
    assert len(one) == 2 and " | INFO | " in one[0]
    assert len(two) == 4 and json.loads(two[0])["event"] == "request_start"
    assert [app.config["DIAGLOG_FORMAT"] for app in apps] == ["plain", "json"]


@pytest.mark.parametrize("call", [stats, inflight])
def test_unregistered_app_is_explained(call: Callable[[Flask], object]) -> None:
    """stats() and inflight() on an app without DiagLog say to call init_app."""
    with pytest.raises(RuntimeError, match="Did you forget to call DiagLog"):
        call(Flask(__name__))


def test_stats_outside_app_context_is_explained() -> None:
    """stats() without an app outside an app context says to pass the app."""
    with pytest.raises(RuntimeError, match="outside of an application context"):
        stats()


def test_repr_works_outside_app_context() -> None:
    """repr(DiagLog()) does not need an app context."""
    assert repr(DiagLog()) == "<DiagLog>"


def test_create_app_twice_writes_each_record_once(tmp_path: Path) -> None:
    """Two apps with the same name and log dir (a factory run twice) never duplicate a line."""
    apps = []
    for _ in range(2):
        app = Flask("factory_app")
        app.config.update(DIAGLOG_LOG_DIR=str(tmp_path))
        DiagLog(app)

        @app.get("/")
        def index(app: Flask = app) -> str:
            app.logger.info("inside request")
            return "ok"

        apps.append(app)
    for app in apps:
        app.test_client().get("/")
        with app.app_context():
            app.logger.info("in app context")
    apps[1].logger.info("no context at all")
    text = (tmp_path / "requests.log").read_text()
    assert text.count("inside request") == 2
    assert text.count("in app context") == 2
    assert text.count("no context at all") == 1
    assert text.count("request_start") == 2


def test_discarded_apps_are_freed_with_their_files(tmp_path: Path) -> None:
    """An app that is dropped is garbage-collected and its log descriptors are closed.

    Run in a clean interpreter: pytest's own log capture keeps tracebacks (and so apps) alive.
    """
    code = r"""
import gc, os, sys, weakref
from flask import Flask
from flask_diaglog import DiagLog

def make(i):
    app = Flask("discarded")
    app.config.update(DIAGLOG_LOG_DIR=os.path.join(sys.argv[1], str(i)), TESTING=False)

    @app.get("/")
    def index():
        app.logger.info("hello")
        raise RuntimeError("boom")  # exercises the exception receiver too

    DiagLog(app)
    assert app.test_client().get("/").status_code == 500
    return weakref.ref(app)

make(0)  # lazy imports and threads first
gc.collect()
before = len(os.listdir("/proc/self/fd"))
refs = [make(i) for i in range(1, 6)]
gc.collect()
alive = sum(r() is not None for r in refs)
leaked = len(os.listdir("/proc/self/fd")) - before
make(9)  # an app made after dead ones still logs its errors
print(alive, leaked, "request_error" in open(os.path.join(sys.argv[1], "9", "errors.log")).read())
"""
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["0", "0", "True"], out.stderr[-2000:]
