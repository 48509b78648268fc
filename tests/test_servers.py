"""The real-server helpers themselves work (they are what the multi-process tests stand on)."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from servers import RedisServer, gunicorn


def test_redis_server_stops_and_restarts() -> None:
    """A RedisServer answers PING, stops answering when stopped, and answers again after start."""
    server = RedisServer()
    try:
        server.start()
        assert server.ping()
        server.stop()
        assert not server.ping()
        server.start()
        assert server.ping()
    finally:
        server.close()


def test_gunicorn_serves_with_real_workers(tmp_path: Path) -> None:
    """gunicorn() starts real worker processes serving an app module written by the test."""
    (tmp_path / "tinyapp.py").write_text(
        "import os\nfrom flask import Flask\napp = Flask(__name__)\n"
        "@app.get('/')\ndef index():\n    return str(os.getpid())\n"
    )
    with gunicorn("tinyapp:app", workers=2, pythonpath=tmp_path) as base:
        pids = {urllib.request.urlopen(base + "/").read() for _ in range(20)}
    assert pids and all(p.isdigit() for p in pids)
