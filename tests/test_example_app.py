"""Smoke test of the example app: upload, generate in background work, poll status, fetch mesh."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import pytest
from flask import Flask

from example_app import create_app


def png(width: int = 4, height: int = 3) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", 13)
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + bytes(range(256))
    )


@pytest.fixture
def example(tmp_path: Path) -> Flask:
    return create_app(
        {
            "TESTING": True,
            "DIAGLOG_LOG_DIR": str(tmp_path / "logs"),
            "EXAMPLE_GENERATE_SECONDS": 0.05,
        }
    )


def wait_for_status(client: object, job_id: str, wanted: str, timeout: float = 10.0) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while True:
        record = client.get(f"/api/jobs/{job_id}").json  # type: ignore[attr-defined]
        if record["status"] == wanted or time.monotonic() > deadline:
            return record  # type: ignore[no-any-return]
        time.sleep(0.02)


def test_upload_generate_status_result(example: Flask, tmp_path: Path) -> None:
    """The main job: upload an image, generate its mesh in the background, read it back."""
    client = example.test_client()
    r = client.post("/api/images", data={"image": (io.BytesIO(png()), "in.png")})
    assert r.status_code == 201
    job_id = r.json["job_id"]  # type: ignore[index]
    assert r.json["image"] == {"format": "png", "width": 4, "height": 3}  # type: ignore[index]

    r = client.post(f"/api/jobs/{job_id}/generate", json={"resolution": 8})
    assert r.status_code == 202 and r.headers["X-Request-ID"]
    request_id = r.headers["X-Request-ID"]
    record = wait_for_status(client, job_id, "done")
    assert record["status"] == "done"
    assert record["result"] == {"vertices": 64, "faces": 49}
    mesh = client.get(f"/api/jobs/{job_id}/result")
    assert mesh.mimetype == "model/obj" and mesh.data.count(b"\nf ") == 49

    jobs_log = (tmp_path / "logs" / "jobs.log").read_text()
    for name in ("validate", "preprocess", "generate", "postprocess"):
        assert f"stage {name} " in jobs_log
    assert f"req={request_id} job={job_id} | job_end run_generation ok" in jobs_log


def test_double_generate_is_refused_while_running(tmp_path: Path) -> None:
    """A second generate for a running job gets 409 problem+json; after it finishes, 202 again."""
    app = create_app(
        {"TESTING": True, "DIAGLOG_LOG_DIR": str(tmp_path / "logs"), "EXAMPLE_GENERATE_SECONDS": 2}
    )
    client = app.test_client()
    job_id = client.post("/api/images", data={"image": (io.BytesIO(png()), "in.png")}).json[
        "job_id"
    ]  # type: ignore[index]
    assert client.post(f"/api/jobs/{job_id}/generate").status_code == 202
    second = client.post(f"/api/jobs/{job_id}/generate")
    assert second.status_code == 409 and second.mimetype == "application/problem+json"
    assert second.json["job_id"] == job_id  # type: ignore[index]
    assert second.json["title"] == "Job already in progress"  # type: ignore[index]
    assert wait_for_status(client, job_id, "done")["status"] == "done"
    deadline = time.monotonic() + 10
    while (r := client.post(f"/api/jobs/{job_id}/generate")).status_code == 409:
        assert time.monotonic() < deadline, "the job was never freed"
        time.sleep(0.02)
    assert r.status_code == 202
    wait_for_status(client, job_id, "done")


def test_invalid_uploads_get_problem_json(example: Flask) -> None:
    """Bad uploads get 4xx problem+json answers, never a 500."""
    client = example.test_client()
    cases = [
        ({}, 400),
        ({"image": (io.BytesIO(b""), "empty.png")}, 400),
        ({"image": (io.BytesIO(b"GIF89a..."), "x.gif")}, 415),
    ]
    for data, status in cases:
        r = client.post("/api/images", data=data)
        assert r.status_code == status and r.mimetype == "application/problem+json"
    r = client.post("/api/jobs/nope/generate")
    assert r.status_code == 404 and r.mimetype == "application/problem+json"
    r = client.post("/api/jobs/bad id/generate")
    assert r.status_code == 400 and r.json["title"] == "Invalid job id"  # type: ignore[index]


def test_health_check_is_not_logged(example: Flask, tmp_path: Path) -> None:
    """The health check is excluded from the trail."""
    example.test_client().get("/healthz")
    log = tmp_path / "logs" / "requests.log"
    assert not log.exists() or "/healthz" not in log.read_text()


def test_make_demo_entry_point_starts() -> None:
    """``python -m example_app`` (what ``make demo`` runs) imports and parses its options."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "example_app", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(Path(__file__).resolve().parent.parent),
    )
    assert out.returncode == 0, out.stderr
    assert "--port" in out.stdout
