"""File downloads under real gunicorn workers keep the server's zero-copy ``sendfile``.

``send_file`` returns the server's own ``wsgi.file_wrapper``, and gunicorn sends it with
``os.sendfile`` only when the body the app returns is an instance of that class. A gunicorn
``post_fork`` hook (``gunicorn.conf.py``, read from the working directory) wraps gunicorn's
``Response.sendfile`` and writes the path of every request it served with sendfile to a marker
file: that is how the tests see which path gunicorn took. Nothing here is a mock.
"""

from __future__ import annotations

import os
import socket
import struct
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import gunicorn

from tests.conftest import WAIT, Logs, wait_until

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

APP = """
import os
from flask import Flask, send_file
from flask_diaglog import DiagLog, guard_job

app = Flask("sendfile_app")
DiagLog(app)
BIG = os.environ["SENDFILE_BIG"]


@app.get("/")
def index():
    return "up"


@app.get("/file")
def file():
    return send_file(BIG)


@app.get("/download/<job_id>")
@guard_job
def download(job_id):
    return send_file(BIG)
"""

CONF = """
import os


def post_fork(server, worker):
    from gunicorn.http import wsgi

    marker = os.environ["SENDFILE_MARKER"]
    sendfile = wsgi.Response.sendfile

    def recording_sendfile(self, respiter):
        used = sendfile(self, respiter)
        if used:
            with open(marker, "a") as f:
                f.write(self.req.path + "\\n")
        return used

    wsgi.Response.sendfile = recording_sendfile
"""

#: Larger than the server's socket send buffer (4 MiB at most by default on Linux) plus the
#: client's small receive buffer: a client that stops reading holds the server in the transfer.
SIZE = 16 * 1024 * 1024


class Served:
    """One gunicorn serving :data:`APP`: its URL, the file it sends, its logs and marker."""

    def __init__(self, base: str, data: bytes, logs: Logs, marker: Path, sendfile: bool) -> None:
        self.base = base
        self.sendfile = sendfile  # gunicorn may use sendfile (not --no-sendfile)
        self.data = data
        self.logs = logs
        self.marker = marker

    def sent_with_sendfile(self, path: str) -> bool:
        return self.marker.exists() and path in self.marker.read_text().split()

    def ends(self, rid: str) -> list[dict[str, Any]]:
        return [e for e in self.logs.events("requests", "request_end") if e["request_id"] == rid]

    def end(self, rid: str) -> dict[str, Any]:
        """The one end line of ``rid``, once written."""
        wait_until(lambda: self.ends(rid) != [], f"the end line of {rid}")
        (end,) = self.ends(rid)
        return end


@pytest.fixture(
    params=[("sync", 2, 1, True), ("gthread", 1, 4, True), ("sync", 2, 1, False)],
    ids=["sync", "gthread", "sync-no-sendfile"],
    scope="module",
)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_server: Any
) -> Iterator[Served]:
    """gunicorn with sync or gthread workers; the last with ``--no-sendfile``: gunicorn then
    reads the file through its wrapper, the path it also takes where sendfile cannot work."""
    worker_class, workers, threads, sendfile = request.param
    tmp = tmp_path_factory.mktemp(f"sendfile-{worker_class}")
    (tmp / "sendfile_app.py").write_text(textwrap.dedent(APP))
    (tmp / "gunicorn.conf.py").write_text(textwrap.dedent(CONF))
    data = os.urandom(SIZE)
    (tmp / "big.bin").write_bytes(data)
    redis_server.flushall()
    env = {
        "PYTHONPATH": str(REPO),  # this checkout's flask_diaglog, not the installed one
        "DIAGLOG_LOG_DIR": str(tmp / "logs"),
        "DIAGLOG_FORMAT": "json",
        "DIAGLOG_JOB_STORE": redis_server.url,  # the 409 comes from whichever worker answers
        "SENDFILE_BIG": str(tmp / "big.bin"),
        "SENDFILE_MARKER": str(tmp / "sendfile.txt"),
        "GUNICORN_CMD_ARGS": "" if sendfile else "--no-sendfile",
    }
    with gunicorn(
        "sendfile_app:app",
        workers=workers,
        worker_class=worker_class,
        threads=threads,
        env=env,
        cwd=tmp,
        pythonpath=tmp,
    ) as base:
        yield Served(base, data, Logs(tmp / "logs"), tmp / "sendfile.txt", sendfile)


def get(url: str, rid: str) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"X-Request-ID": rid})
    try:
        with urllib.request.urlopen(req, timeout=WAIT) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read()


class SlowDownload:
    """A GET read by hand through a small receive buffer: the server can send only as fast as
    the test reads."""

    def __init__(self, base: str, path: str, rid: str) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self.sock.settimeout(WAIT)
        self.sock.connect((host, int(port)))
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nX-Request-ID: {rid}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(4096)
            assert chunk, "connection closed before the headers"
            buf += chunk
        head, _, self.body = buf.partition(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])

    def read(self, n: int) -> None:
        while len(self.body) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.body += chunk

    def read_all(self) -> bytes:
        while chunk := self.sock.recv(65536):
            self.body += chunk
        self.sock.close()
        return self.body


def test_send_file_is_sent_with_sendfile(served: Served) -> None:
    """A send_file download under DiagLog is sent by gunicorn's sendfile (unless turned off),
    byte for byte, and its end line (status 200, not aborted) is written once it is over."""
    assert get(served.base + "/file", "sf-1") == (200, served.data)
    end = served.end("sf-1")
    assert end["status"] == 200 and "aborted" not in end, end
    assert served.sent_with_sendfile("/file") is served.sendfile


def test_guarded_download_holds_its_job_until_sent(served: Served) -> None:
    """A @guard_job download holds its job while the client is still reading it (a second
    request gets 409, and no end line is written yet) and frees it after."""
    first = SlowDownload(served.base, "/download/dl-job", "dl-1")
    assert first.status == 200
    first.read(256 * 1024)
    assert get(served.base + "/download/dl-job", "dl-2")[0] == 409
    assert served.end("dl-2")["status"] == 409
    assert served.ends("dl-1") == []  # still sending: the request is not over
    assert first.read_all() == served.data
    end = served.end("dl-1")
    assert end["status"] == 200 and "aborted" not in end, end
    assert served.sent_with_sendfile("/download/dl-job") is served.sendfile
    assert get(served.base + "/download/dl-job", "dl-3") == (200, served.data)


def test_download_the_client_leaves_is_aborted(served: Served) -> None:
    """A client that goes away in the middle of a download: the end line is written, marked
    aborted, and the job is free again."""
    gone = SlowDownload(served.base, "/download/gone-job", "gone-1")
    assert gone.status == 200
    gone.read(256 * 1024)
    gone.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    gone.sock.close()  # unread data and linger 0: a reset, the server's send fails
    end = served.end("gone-1")
    assert end["status"] == 200 and end["aborted"] is True, end
    assert get(served.base + "/download/gone-job", "gone-2") == (200, served.data)
