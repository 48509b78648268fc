"""Every logger, by default: records of any logger reach the trail with the ids, without changing
what the app's own handlers print, and without diaglog's or the socket clients' records looping."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Logs
from flask import Flask

from flask_diaglog import DiagLog
from flask_diaglog.signals import SIGNALS
from flask_diaglog.testing import capture_events

REPO = Path(__file__).resolve().parents[1]
FLAT = Path(__file__).resolve().parent / "apps" / "flat"
#: Flask's default handler stamps lines with the time: ``[2026-11-30 03:43:50,558]``.
FLASK_TIME = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\]", re.M)


def run_flat(args: list[str], log_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python *args`` in the flat-layout app's directory, as a user would."""
    full = dict(os.environ, PYTHONPATH=str(REPO), DIAGLOG_LOG_DIR=str(log_dir), **env)
    full.pop("TESTING", None)
    return subprocess.run(
        [sys.executable, *args],
        cwd=FLAT,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


FLAT_CLIENT = """
import threading
from app import app
client = app.test_client()
client.get("/hello?n=fail", headers={"X-Request-ID": "flat-1"})
client.get("/info?n=2", headers={"X-Request-ID": "flat-2"})
client.post("/jobs/J1", headers={"X-Request-ID": "flat-job"})
for t in threading.enumerate():
    if t.name.startswith("diaglog-job-"):
        t.join()
"""


@pytest.mark.slow
def test_flat_layout_module_loggers_reach_the_trail(logs: Logs, log_dir: Path) -> None:
    """app.py beside helpers.py: the helpers' records carry the ids; errors reach errors.log."""
    done = run_flat(["-c", FLAT_CLIENT], log_dir)
    assert done.returncode == 0, done.stderr
    requests = logs.text("requests")
    assert "| INFO | helpers | req=flat-1 job=- | helper info fail" in requests
    assert "| INFO | app | req=flat-2 job=- | module info 2" in requests
    assert "| INFO | app | req=flat-2 job=- | app info 2" in requests
    jobs = logs.text("jobs")
    assert "| INFO | helpers | req=flat-job job=J1 | background info J1" in jobs
    errors = logs.lines("errors")
    assert [line.split(" | ", 2)[2] for line in errors] == [
        "helpers | req=flat-1 job=- | helper error fail",
        "helpers | req=flat-job job=J1 | background error J1",
    ]


@pytest.mark.slow
def test_script_run_as_main_reaches_the_trail(logs: Logs, log_dir: Path) -> None:
    """``python main.py``: the ``__main__`` logger's records carry the ids of their request."""
    done = run_flat(["main.py"], log_dir)
    assert done.returncode == 0, done.stderr
    requests = logs.text("requests")
    assert "| INFO | __main__ | req=main-1 job=- | main info 1" in requests
    assert "| WARNING | __main__ | req=main-fail job=- | main warning fail" in requests
    assert "| INFO | helpers | req=main-fail job=- | helper info fail" in requests
    assert "| INFO | __main__ | req=- job=- | outside any request" in requests
    assert "| ERROR | helpers | req=main-job job=J7 | background error J7" in logs.text("jobs")
    assert len(logs.lines("errors")) == 2


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["main.py"], id="unconfigured"),
        pytest.param(
            [
                "-c",
                "import logging, runpy; logging.basicConfig(format='%(name)s:%(message)s');"
                "runpy.run_path('main.py', run_name='__main__')",
            ],
            id="basicConfig-before",
        ),
        pytest.param(
            [
                "-c",
                "import logging, runpy, app; "
                "logging.basicConfig(level=logging.INFO, format='%(name)s:%(message)s');"
                "runpy.run_path('main.py', run_name='__main__')",
            ],
            id="basicConfig-after-at-INFO",
        ),
    ],
)
def test_the_console_prints_what_it_prints_without_diaglog(tmp_path: Path, args: list[str]) -> None:
    """Same stdout and stderr with and without DiagLog: no new lines, none twice, none lost."""
    without = run_flat(args, tmp_path / "off", DIAGLOG_ENABLED="false")
    with_diaglog = run_flat(args, tmp_path / "on")
    assert without.returncode == with_diaglog.returncode == 0, with_diaglog.stderr
    assert "helper error fail" in without.stderr  # the comparison compares something
    assert FLASK_TIME.sub("[T]", with_diaglog.stderr) == FLASK_TIME.sub("[T]", without.stderr)
    assert with_diaglog.stdout == without.stdout
    assert "main info 1" in (tmp_path / "on" / "requests.log").read_text()


def test_records_only_diaglog_sees_never_reach_the_apps_handlers(tmp_path: Path) -> None:
    """An INFO record that exists only because diaglog lowered the root level goes to the trail,
    not to a handler the app put on its own (unleveled) logger. In a fresh interpreter: the root
    level is process state, and other tests' apps may still hold it here."""
    script = textwrap.dedent(
        f"""
        import io, logging
        from flask import Flask
        from flask_diaglog import DiagLog

        printed = io.StringIO()
        own = logging.getLogger("tests.own")
        own.addHandler(logging.StreamHandler(printed))
        app = Flask("own")
        app.config["DIAGLOG_LOG_DIR"] = {str(tmp_path / "logs")!r}
        DiagLog(app)

        @app.get("/")
        def index():
            own.info("quiet detail")
            own.warning("loud warning")
            return "ok"

        app.test_client().get("/", headers={{"X-Request-ID": "lv1"}})
        print(printed.getvalue(), end="")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "loud warning\n"
    text = (tmp_path / "logs" / "requests.log").read_text()
    assert "| INFO | tests.own | req=lv1 job=- | quiet detail" in text
    assert "| WARNING | tests.own | req=lv1 job=- | loud warning" in text


def test_a_level_the_app_sets_later_is_the_apps(make_app: Callable[..., Flask]) -> None:
    """Once the app sets the root level itself (caplog.set_level does), its handlers get what
    that level lets through, INFO included."""
    printed = io.StringIO()
    own = logging.getLogger("tests.later")
    own.addHandler(logging.StreamHandler(printed))
    app = make_app()
    logging.getLogger().setLevel(logging.INFO)

    @app.get("/")
    def index() -> str:
        own.info("now wanted")
        return "ok"

    app.test_client().get("/")
    assert printed.getvalue() == "now wanted\n"


def test_no_handler_is_added_to_the_root_logger(make_app: Callable[..., Flask]) -> None:
    """The root logger keeps its handlers (so basicConfig still works); only its level is
    lowered, to just below DIAGLOG_LEVEL."""
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    handlers = list(root.handlers)
    app = make_app()
    assert root.handlers == handlers
    assert root.level == logging.INFO - 1
    assert app.extensions["diaglog"].active  # the change lasts as long as the app


def test_adjust_levels_off_leaves_levels_alone(make_app: Callable[..., Flask], logs: Logs) -> None:
    """DIAGLOG_ADJUST_LEVELS=False: no level changes; records the levels let through are
    still captured."""
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    app = make_app({"DIAGLOG_ADJUST_LEVELS": False})
    assert root.level == logging.WARNING
    lib = logging.getLogger("tests.lib")

    @app.get("/")
    def index() -> str:
        lib.info("not created")
        lib.warning("created")
        return "ok"

    app.test_client().get("/")
    text = logs.text("requests")
    assert "not created" not in text
    assert "| WARNING | tests.lib | " in text


def test_explicit_loggers_narrow_the_capture(make_app: Callable[..., Flask], logs: Logs) -> None:
    """DIAGLOG_LOGGERS lists the loggers captured (with their children); others are not, even
    at ERROR."""
    app = make_app({"DIAGLOG_LOGGERS": "tests.mine"})

    @app.get("/")
    def index() -> str:
        logging.getLogger("tests.mine.sub").info("mine")
        logging.getLogger("tests.other").error("other")
        return "ok"

    app.test_client().get("/")
    assert "| INFO | tests.mine.sub | " in logs.text("requests")
    assert "other" not in logs.text("requests") + logs.text("errors")


def test_errors_outside_a_request_reach_errors_log(
    make_app: Callable[..., Flask], logs: Logs
) -> None:
    """An ERROR of any logger, outside any request or job, is in errors.log."""
    app = make_app()
    logging.getLogger("tests.cron").error("nightly failed")
    assert app.extensions["diaglog"].active  # (and the app was alive all along)
    assert logs.lines("errors")[-1].endswith("| tests.cron | req=- job=- | nightly failed")


def test_diaglogs_own_records_are_never_captured(
    make_app: Callable[..., Flask], logs: Logs
) -> None:
    """Records of diaglog's own loggers never become events or lines (they cannot loop)."""
    app = make_app()

    @app.get("/")
    def index() -> str:
        logging.getLogger("flask_diaglog.live").warning("internal note")
        return "ok"

    with capture_events(app) as events:
        app.test_client().get("/")
    assert events.kinds == ["request_start", "request_end"]
    assert "internal note" not in logs.text("requests")


def test_socket_and_redis_records_from_receivers_cannot_loop(
    make_app: Callable[..., Flask], logs: Logs
) -> None:
    """Receivers that log through the Socket.IO and Redis loggers on every event: each of their
    records is written once and raises no further event."""
    app = make_app({"DIAGLOG_FORMAT": "json"})
    heard: list[str] = []

    def chatty(sender: Any, event: Any) -> None:
        heard.append(event.kind)
        logging.getLogger("redis.connection").warning("reconnecting after %s", event.kind)
        logging.getLogger("socketio.server").warning("emitting %s", event.kind)

    for signal in SIGNALS.values():
        signal.connect(chatty, app)
    try:

        @app.get("/")
        def index() -> str:
            app.logger.warning("view")
            return "ok"

        app.test_client().get("/")
    finally:
        for signal in SIGNALS.values():
            signal.disconnect(chatty, app)
    assert heard == ["request_start", "log", "request_end"]
    records = logs.json("requests")
    redis = [r["msg"] for r in records if r["logger"] == "redis.connection"]
    assert redis == [f"reconnecting after {kind}" for kind in heard]
    assert sum(r["logger"] == "socketio.server" for r in records) == len(heard)


def test_capture_ends_when_the_app_is_discarded(tmp_path: Path) -> None:
    """A discarded app's capture, level change and handler stand-ins are undone. Run in a fresh
    interpreter: in this one, apps of other tests may still be alive (a Socket.IO server's
    service thread keeps its app for the life of the process), and capture rightly goes on for
    them."""
    script = textwrap.dedent(
        f"""
        import gc, logging
        from flask import Flask
        from flask_diaglog import DiagLog

        root = logging.getLogger()
        root.setLevel(logging.WARNING)
        last_resort = logging.lastResort
        app = Flask("discarded")
        app.config["DIAGLOG_LOG_DIR"] = {str(tmp_path / "logs")!r}
        DiagLog(app)
        assert root.level < logging.WARNING, root.level
        del app
        gc.collect()
        assert root.level == logging.WARNING, root.level
        assert logging.lastResort is last_resort
        logging.getLogger("tests.after").error("after the app")
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "ok\n"
    assert "after the app" not in (tmp_path / "logs" / "errors.log").read_text()


def test_two_apps_each_keep_their_own_lines(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    """With two apps in one process, a module logger's line goes to the app of its request."""
    first = make_app()
    second = Flask("second")
    second.config.update(TESTING=True, DIAGLOG_LOG_DIR=str(tmp_path / "second"))
    DiagLog(second)
    lib = logging.getLogger("tests.shared")
    for app in (first, second):

        @app.get("/")
        def index() -> str:
            lib.info("from the request")
            return "ok"

    first.test_client().get("/", headers={"X-Request-ID": "one"})
    second.test_client().get("/", headers={"X-Request-ID": "two"})
    second_text = (tmp_path / "second" / "requests.log").read_text()
    assert "req=two job=- | from the request" in second_text
    assert "req=one" not in second_text
