"""Shared fixtures. Log files always go under ``tmp_path``; tests read the real files."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_diaglog import DiagLog, MemoryJobStore, RedisJobStore
from flask_diaglog.jobs import JobStore

pytest_plugins = ["pytester"]

#: Upper bound of every wait in the tests; never reached unless something is broken.
WAIT = 30.0


def wait_until(cond: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll ``cond`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# tests/ is on sys.path (rootdir conftest, prepend import mode): `from servers import ...` works.


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No DIAGLOG_* or TESTING variable from the outer environment leaks into a test, and nothing a
    test sets leaks out (Flask's CLI sets FLASK_RUN_FROM_CLI, which turns app.run() off in every
    subprocess started afterwards)."""
    before = dict(os.environ)
    for key in list(os.environ):
        if key.startswith("DIAGLOG_") or key == "TESTING":
            monkeypatch.delenv(key)
    yield
    for key in set(os.environ) - set(before):
        os.environ.pop(key, None)  # monkeypatch then puts back what it removed


@pytest.fixture(autouse=True)
def _forget_socketio_test_clients() -> Iterator[None]:
    """Flask-SocketIO's test client keeps every client in a class-level dict, even disconnected,
    and each client holds its app: without this, every app a test made with a Socket.IO test
    client would stay alive (and keep its logging capture) for the rest of the session."""
    from flask_socketio.test_client import SocketIOTestClient

    before = set(SocketIOTestClient.clients)
    yield
    for key in set(SocketIOTestClient.clients) - before:
        SocketIOTestClient.clients.pop(key, None)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Every logger's handlers and level are put back after each test."""
    manager = logging.Logger.manager
    root = logging.getLogger()
    before = {
        name: (lg.handlers[:], lg.level)
        for name, lg in list(manager.loggerDict.items())
        if isinstance(lg, logging.Logger)
    }
    root_before = (root.handlers[:], root.level)
    yield
    for name, lg in list(manager.loggerDict.items()):
        if not isinstance(lg, logging.Logger):
            continue
        handlers, level = before.get(name, ([], logging.NOTSET))
        lg.handlers[:] = handlers
        lg.setLevel(level)
    root.handlers[:] = root_before[0]
    root.setLevel(root_before[1])


class Logs:
    """Reads the files diaglog wrote."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def path(self, name: str) -> Path:
        return self.dir / (name if name.endswith(".log") else f"{name}.log")

    def text(self, name: str) -> str:
        p = self.path(name)
        return p.read_text(encoding="utf-8") if p.exists() else ""

    def lines(self, name: str) -> list[str]:
        return self.text(name).splitlines()

    def json(self, name: str) -> list[dict[str, Any]]:
        """The complete lines as JSON: a line still being written (no line feed yet, as a reader
        may see a write in progress) is left for the next read."""
        return [json.loads(line) for line in self.text(name).split("\n")[:-1] if line]

    def events(self, name: str, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.json(name) if r.get("event") == kind]


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "logs"


@pytest.fixture
def logs(log_dir: Path) -> Logs:
    return Logs(log_dir)


@pytest.fixture
def make_app(log_dir: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Callable[..., Flask]:
    """``make_app(config=None, *, init=True, **diaglog_kwargs)``: a test app using tmp log files."""

    def factory(config: dict[str, Any] | None = None, *, init: bool = True, **kw: Any) -> Flask:
        app = Flask(request.module.__name__, instance_path=str(tmp_path / "instance"))
        app.config.update(TESTING=True, DIAGLOG_LOG_DIR=str(log_dir))
        app.config.update(config or {})
        if init:
            DiagLog(app, **kw)
        return app

    return factory


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    """A real redis-server for the whole session (see tests/servers.py)."""
    from servers import RedisServer

    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: Any) -> str:
    """The session Redis, emptied (and restarted if a test stopped it) before each test."""
    if not redis_server.ping():
        redis_server.start()
    redis_server.flushall()
    return str(redis_server.url)


CHROMIUM = "/usr/bin/chromium"
#: Flags for Chromium on this closed network (see DESIGN.md): no background traffic, no sandbox
#: (CI runs as root), no GPU.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip


@pytest.fixture
def browser() -> Iterator[Any]:
    """A real headless Debian Chromium driven by Playwright (skips where it is not installed)."""
    if not os.path.exists(CHROMIUM):
        pytest.skip("needs Debian's chromium: apt-get install chromium (CI installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def jobs_app(make_app: Callable[..., Flask]) -> Iterator[Callable[..., tuple[Flask, DiagLog]]]:
    """``jobs_app(config)``: an app in JSON format with its DiagLog; job stores closed after."""
    made: list[Flask] = []

    def factory(config: dict[str, Any] | None = None) -> tuple[Flask, DiagLog]:
        app = make_app({"DIAGLOG_FORMAT": "json", **(config or {})}, init=False)
        diaglog = DiagLog(app)
        made.append(app)
        return app, diaglog

    yield factory
    for app in made:
        # Teardown, not an assertion: closing the store needs the app's job guard itself.
        guard = app.extensions["diaglog"].guard
        if guard is not None:
            guard.close()


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[JobStore]:
    """A MemoryJobStore, or a RedisJobStore on the session's real Redis."""
    if request.param == "memory":
        yield MemoryJobStore()
        return
    s = RedisJobStore(request.getfixturevalue("redis_url"))
    yield s
    s.close()
