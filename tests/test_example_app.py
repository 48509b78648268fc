"""The example app (example_app/): upload, generation in background work with progress, job
records in memory or Redis, problem+json for every error, real gunicorn workers, and the demo's
entry point with the dashboard."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from servers import free_port, gunicorn

from example_app import create_app
from example_app.__main__ import banner, demo_config
from example_app.store import MemoryStore, RedisStore

ROOT = Path(__file__).resolve().parent.parent
PROBLEM = "application/problem+json"


def png(width: int = 4, height: int = 3) -> bytes:
    """A real PNG (decoded by Pillow like any upload)."""
    out = io.BytesIO()
    Image.effect_noise((width, height), 40).convert("RGB").save(out, "PNG")
    return out.getvalue()


def jpeg(width: int = 8, height: int = 6) -> bytes:
    out = io.BytesIO()
    Image.effect_noise((width, height), 40).convert("RGB").save(out, "JPEG")
    return out.getvalue()


@pytest.fixture
def made(tmp_path: Path) -> Iterator[list[Flask]]:
    """Apps made by a test; their job stores are closed after it."""
    apps: list[Flask] = []
    yield apps
    for app in apps:
        app.extensions["example_jobs"].close()
        guard = app.extensions["diaglog"].guard
        if guard is not None:
            guard.close()


def make(made: list[Flask], tmp_path: Path, **config: Any) -> Flask:
    app = create_app(
        {
            "TESTING": True,
            "DIAGLOG_LOG_DIR": str(tmp_path / "logs"),
            "DIAGLOG_FORMAT": "json",
            "EXAMPLE_GENERATE_SECONDS": 0.05,
            **config,
        }
    )
    made.append(app)
    return app


@pytest.fixture
def example(made: list[Flask], tmp_path: Path) -> Flask:
    return make(made, tmp_path)


def upload(client: FlaskClient, data: bytes, name: str = "in.png") -> Any:
    return client.post("/api/images", data={"image": (io.BytesIO(data), name)})


def wait_for_status(client: Any, job_id: str, wanted: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        record = client.get(f"/api/jobs/{job_id}").json
        if record["status"] in (wanted, "failed") or time.monotonic() > deadline:
            return record
        time.sleep(0.02)


def records(log_dir: Path, name: str) -> list[dict[str, Any]]:
    path = log_dir / name
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


# -- the main job --------------------------------------------------------------------------------


def test_upload_generate_status_result(example: Flask, tmp_path: Path) -> None:
    """Upload an image, generate its mesh in the background, read it back; stages are logged."""
    client = example.test_client()
    r = upload(client, png())
    assert r.status_code == 201
    job_id = r.json["job_id"]
    assert r.json["image"] == {"format": "png", "width": 4, "height": 3}

    r = client.post(f"/api/jobs/{job_id}/generate", json={"resolution": 8})
    assert r.status_code == 202
    request_id = r.headers["X-Request-ID"]
    record = wait_for_status(client, job_id, "done")
    assert record["status"] == "done"
    assert record["result"] == {"vertices": 64, "faces": 49}
    mesh = client.get(f"/api/jobs/{job_id}/result")
    assert mesh.mimetype == "model/obj" and mesh.data.count(b"\nf ") == 49

    jobs = records(tmp_path / "logs", "jobs.log")
    stages = [r["stage"] for r in jobs if r["event"] == "stage" and r["job_id"] == job_id]
    assert stages == ["validate", "preprocess", "generate", "postprocess"]
    (end,) = [r for r in jobs if r["event"] == "job_end"]
    assert end["ok"] and end["request_id"] == request_id and end["job_id"] == job_id


def test_a_jpeg_upload_is_decoded(example: Flask) -> None:
    """JPEG uploads are accepted with their real size."""
    r = upload(example.test_client(), jpeg(), "in.jpg")
    assert r.status_code == 201 and r.json["image"] == {"format": "jpeg", "width": 8, "height": 6}


def test_upload_end_line_carries_the_new_job_id(example: Flask, tmp_path: Path) -> None:
    """The upload creates the job id, and its own end line already carries it."""
    r = upload(example.test_client(), png())
    ends = [x for x in records(tmp_path / "logs", "requests.log") if x["event"] == "request_end"]
    assert ends[-1]["request_id"] == r.headers["X-Request-ID"]
    assert ends[-1]["job_id"] == r.json["job_id"]


def test_generation_reports_progress(made: list[Flask], tmp_path: Path) -> None:
    """The pipeline's progress lines rise to 1.0, and the job record holds the last value."""
    app = make(made, tmp_path, EXAMPLE_GENERATE_SECONDS=1.0, DIAGLOG_PROGRESS_INTERVAL=0.1)
    client = app.test_client()
    job_id = upload(client, png()).json["job_id"]
    client.post(f"/api/jobs/{job_id}/generate", json={"resolution": 8})
    record = wait_for_status(client, job_id, "done")
    assert record["progress"] == {"fraction": 1.0, "message": "mesh ready"}
    fractions = [
        r["fraction"]
        for r in records(tmp_path / "logs", "jobs.log")
        if r["event"] == "progress" and r["job_id"] == job_id
    ]
    assert len([f for f in fractions if 0 < f < 1]) >= 3, fractions
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_double_generate_is_refused_while_running(made: list[Flask], tmp_path: Path) -> None:
    """A second generate for a running job gets 409 problem+json; after it finishes, 202 again."""
    app = make(made, tmp_path, EXAMPLE_GENERATE_SECONDS=2)
    client = app.test_client()
    job_id = upload(client, png()).json["job_id"]
    assert client.post(f"/api/jobs/{job_id}/generate").status_code == 202
    second = client.post(f"/api/jobs/{job_id}/generate")
    assert second.status_code == 409 and second.mimetype == PROBLEM
    assert second.json["job_id"] == job_id
    assert second.json["title"] == "Job already in progress"
    assert wait_for_status(client, job_id, "done")["status"] == "done"
    deadline = time.monotonic() + 10
    while (r := client.post(f"/api/jobs/{job_id}/generate")).status_code == 409:
        assert time.monotonic() < deadline, "the job was never freed"
        time.sleep(0.02)
    assert r.status_code == 202
    wait_for_status(client, job_id, "done")


# -- every error is problem+json -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "status", "title"),
    [
        ({}, 400, "Missing image"),
        ({"image": (io.BytesIO(b""), "empty.png")}, 400, "Empty image"),
        ({"image": (io.BytesIO(b"GIF89a" + bytes(40)), "x.gif")}, 415, "Unsupported image"),
    ],
    ids=["missing", "empty", "gif"],
)
def test_invalid_uploads_get_problem_json(
    example: Flask, data: dict[str, Any], status: int, title: str
) -> None:
    """Bad uploads get 4xx problem+json answers naming the problem."""
    r = example.test_client().post("/api/images", data=data)
    assert (r.status_code, r.mimetype, r.json["title"]) == (status, PROBLEM, title)


@pytest.mark.parametrize("cut", [0.5, 0.9], ids=["half", "most"])
def test_a_truncated_png_is_refused(example: Flask, cut: float) -> None:
    """A PNG whose pixel data is cut off is really decoded, and refused with 422."""
    data = png(64, 48)
    r = upload(example.test_client(), data[: int(len(data) * cut)])
    assert (r.status_code, r.mimetype, r.json["title"]) == (422, PROBLEM, "Damaged image")
    assert "truncated" in r.json["detail"]


def test_a_png_cut_inside_its_header_is_damaged_not_foreign(example: Flask) -> None:
    """A PNG cut before its header ends is a damaged PNG (422), not an unsupported type."""
    r = upload(example.test_client(), png()[:20])
    assert (r.status_code, r.json["title"]) == (422, "Damaged image")


def test_a_corrupt_jpeg_is_refused(example: Flask) -> None:
    """A JPEG cut in half is refused with 422 problem+json."""
    data = jpeg(64, 48)
    r = upload(example.test_client(), data[: len(data) // 2], "in.jpg")
    assert (r.status_code, r.mimetype) == (422, PROBLEM)


def test_too_large_upload_gets_413_problem_json(made: list[Flask], tmp_path: Path) -> None:
    """A body over MAX_CONTENT_LENGTH gets 413 problem+json."""
    app = make(made, tmp_path, MAX_CONTENT_LENGTH=1024)
    r = upload(app.test_client(), png(64, 64) + bytes(4096))
    assert (r.status_code, r.mimetype, r.json["status"]) == (413, PROBLEM, 413)


@pytest.fixture
def uploaded(example: Flask) -> tuple[FlaskClient, str]:
    client = example.test_client()
    return client, upload(client, png()).json["job_id"]


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ('{"resolution": 8', 400, "not valid JSON"),
        ("[8]", 400, "must be a JSON object, not list"),
        ('"8"', 400, "must be a JSON object, not str"),
        ("null", 400, "must be a JSON object, not NoneType"),
    ],
    ids=["broken", "array", "string", "null"],
)
def test_a_body_that_is_not_a_json_object_gets_problem_json(
    uploaded: tuple[FlaskClient, str], body: str, status: int, detail: str
) -> None:
    """Broken JSON, or JSON that is not an object, gets 400 problem+json; no job starts."""
    client, job_id = uploaded
    r = client.post(f"/api/jobs/{job_id}/generate", data=body, content_type="application/json")
    assert (r.status_code, r.mimetype) == (status, PROBLEM)
    assert r.json["title"] == "Invalid JSON body" and detail in r.json["detail"]
    assert client.get(f"/api/jobs/{job_id}").json["status"] == "uploaded"


def test_a_body_that_is_not_json_gets_415(uploaded: tuple[FlaskClient, str]) -> None:
    """Options sent as a form get 415 problem+json."""
    client, job_id = uploaded
    r = client.post(f"/api/jobs/{job_id}/generate", data={"resolution": "8"})
    assert (r.status_code, r.mimetype) == (415, PROBLEM)


@pytest.mark.parametrize("resolution", [1, 129, 8.0, True, "8"])
def test_invalid_options_get_422(uploaded: tuple[FlaskClient, str], resolution: Any) -> None:
    """A resolution that is not a whole number from 2 to 128 gets 422 problem+json."""
    client, job_id = uploaded
    r = client.post(f"/api/jobs/{job_id}/generate", json={"resolution": resolution})
    assert (r.status_code, r.mimetype, r.json["title"]) == (422, PROBLEM, "Invalid options")


def test_unknown_routes_and_methods_get_problem_json(example: Flask) -> None:
    """404 and 405 from routing are problem+json too; 405 keeps its Allow header."""
    client = example.test_client()
    r = client.get("/nope")
    assert (r.status_code, r.mimetype, r.json["title"]) == (404, PROBLEM, "Not Found")
    r = client.get("/api/images")
    assert (r.status_code, r.mimetype) == (405, PROBLEM)
    assert "POST" in r.headers["Allow"]
    r = client.post("/api/jobs/nope/generate")
    assert (r.status_code, r.mimetype) == (404, PROBLEM)
    r = client.post("/api/jobs/bad id/generate")
    assert (r.status_code, r.mimetype, r.json["title"]) == (400, PROBLEM, "Invalid job id")


def test_an_unhandled_error_gets_500_problem_json(made: list[Flask], tmp_path: Path) -> None:
    """A view that raises is answered 500 problem+json, without the error's text."""
    app = make(made, tmp_path, PROPAGATE_EXCEPTIONS=False)

    def broken() -> str:
        raise RuntimeError("secret internals")

    app.add_url_rule("/broken", view_func=broken)
    r = app.test_client().get("/broken")
    assert (r.status_code, r.mimetype, r.json["title"]) == (500, PROBLEM, "Internal Server Error")
    assert "secret internals" not in r.get_data(as_text=True)


def test_health_check_is_not_logged(example: Flask, tmp_path: Path) -> None:
    """The health check is excluded from the trail."""
    example.test_client().get("/healthz")
    log = tmp_path / "logs" / "requests.log"
    assert not log.exists() or "/healthz" not in log.read_text()


# -- job records: memory by default, Redis when configured --------------------------------------


def test_job_records_are_in_memory_by_default(example: Flask) -> None:
    """Without DIAGLOG_JOB_STORE the records live in this process (make demo needs no Redis)."""
    assert isinstance(example.extensions["example_jobs"], MemoryStore)


def test_redis_records_are_shared_between_apps(
    made: list[Flask], tmp_path: Path, redis_url: str
) -> None:
    """With a Redis store, an upload made through one app is generated and read through another."""
    one = make(made, tmp_path, DIAGLOG_JOB_STORE=redis_url).test_client()
    other_app = make(made, tmp_path, DIAGLOG_JOB_STORE=redis_url)
    assert isinstance(other_app.extensions["example_jobs"], RedisStore)
    other = other_app.test_client()
    job_id = upload(one, png()).json["job_id"]
    assert other.get(f"/api/jobs/{job_id}").json["status"] == "uploaded"
    assert other.post(f"/api/jobs/{job_id}/generate", json={"resolution": 4}).status_code == 202
    assert wait_for_status(one, job_id, "done")["result"] == {"vertices": 16, "faces": 9}
    assert one.get(f"/api/jobs/{job_id}/result").data.startswith(b"v 0 ")


@pytest.mark.slow
def test_gunicorn_two_workers_share_uploads_and_jobs(tmp_path: Path, redis_url: str) -> None:
    """Under gunicorn -w 2 with Redis, each worker sees the other's uploads, job state, progress
    and result, and the 409 guard holds across workers."""
    log_dir = tmp_path / "logs"
    env = {
        "DIAGLOG_JOB_STORE": redis_url,
        "DIAGLOG_LOG_DIR": str(log_dir),
        "DIAGLOG_FORMAT": "json",
        "DIAGLOG_PROGRESS_INTERVAL": "0.1",
        "SECRET_KEY": "shared-by-all-workers",
    }
    spec = "example_app:create_app({'EXAMPLE_GENERATE_SECONDS': 2.0})"
    with gunicorn(
        spec, workers=2, env=env, cwd=ROOT, pythonpath=ROOT, ready_path="/healthz"
    ) as base:
        pids: dict[str, int] = {}

        def call(method: str, path: str, body: bytes | None = None, **headers: str) -> Any:
            req = urllib.request.Request(base + path, data=body, method=method, headers=headers)
            try:
                resp = urllib.request.urlopen(req, timeout=10)
            except urllib.error.HTTPError as err:
                resp = err
            with resp:
                payload = json.loads(resp.read())
                request_id = resp.headers["X-Request-ID"]
            deadline = time.monotonic() + 10  # the end line may follow the response by a moment
            while request_id not in pids:
                for rec in records(log_dir, "requests.log"):
                    if rec["event"] == "request_end" and rec["request_id"] == request_id:
                        pids[request_id] = rec["pid"]
                assert time.monotonic() < deadline, f"no end line for {request_id}"
            return resp.status, payload, pids[request_id]

        head = b'--b0undary\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        form = head + b"Content-Type: image/png\r\n\r\n" + png(32, 32) + b"\r\n--b0undary--\r\n"
        form_type = {"Content-Type": "multipart/form-data; boundary=b0undary"}
        status, created, upload_pid = call("POST", "/api/images", form, **form_type)
        assert status == 201 and upload_pid is not None
        job_id = created["job_id"]

        # Read the record until the other worker has answered (each answer must know the job).
        seen = {upload_pid}
        for _ in range(200):
            status, record, pid = call("GET", f"/api/jobs/{job_id}")
            assert (status, record["status"]) == (200, "uploaded")
            seen.add(pid)
            if len(seen) == 2:
                break
        assert len(seen) == 2, "the second worker never answered"

        status, _, _ = call(
            "POST", f"/api/jobs/{job_id}/generate", b'{"resolution": 8}',
            **{"Content-Type": "application/json"},
        )  # fmt: skip
        assert status == 202
        refused, fractions = set(), []
        deadline = time.monotonic() + 30
        while True:
            status, record, pid = call("GET", f"/api/jobs/{job_id}")
            if record["status"] not in ("queued", "running"):
                break
            if record["progress"]:
                fractions.append(record["progress"]["fraction"])
            if len(refused) < 2:
                status, problem, pid = call("POST", f"/api/jobs/{job_id}/generate")
                if status == 409:  # the job may end between the two calls
                    assert problem["title"] == "Job already in progress"
                    refused.add(pid)
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert record["status"] == "done", record
        assert refused == {*seen}, "each worker refused a duplicate generate"
        assert any(0 < f < 1 for f in fractions), fractions
        for _ in range(20):
            with urllib.request.urlopen(f"{base}/api/jobs/{job_id}/result", timeout=10) as r:
                assert r.read().startswith(b"v 0 ")


# -- make demo: the entry point, with the dashboard ---------------------------------------------


def test_demo_on_loopback_has_the_dashboard_without_a_token() -> None:
    """On a loopback host the demo turns the dashboard on and needs no token."""
    config = demo_config("127.0.0.1", {})
    assert config["DIAGLOG_DASHBOARD"] is True and "DIAGLOG_DASHBOARD_TOKEN" not in config


def test_demo_off_loopback_prints_a_dashboard_url_with_a_working_token(
    made: list[Flask], tmp_path: Path
) -> None:
    """On 0.0.0.0 the demo makes a token; the printed URL opens the dashboard for a remote client,
    and the dashboard without it is refused."""
    config = demo_config("0.0.0.0", {})
    token = config["DIAGLOG_DASHBOARD_TOKEN"]
    app = make(made, tmp_path, **{**config, "DIAGLOG_CONSOLE": False})
    text = banner(app, "0.0.0.0", 8000, generated_token=token)
    found = re.search(r"^dashboard: http://[^/]+(/\S+)$", text, flags=re.M)
    assert found is not None, text
    assert found.group(1) == f"/_diaglog/?token={token}"
    remote = app.test_client()
    remote.environ_base["REMOTE_ADDR"] = "203.0.113.7"
    opened = remote.get(found.group(1), follow_redirects=True)  # to /_diaglog/, with the cookie
    assert opened.status_code == 200 and opened.request.path == "/_diaglog/"
    assert (
        app.test_client().get("/_diaglog/", environ_base={"REMOTE_ADDR": "203.0.113.7"}).status_code
        == 403
    )


def test_demo_keeps_the_operators_token_out_of_the_banner(
    made: list[Flask], tmp_path: Path
) -> None:
    """A token set in DIAGLOG_DASHBOARD_TOKEN is used, and never printed."""
    config = demo_config("0.0.0.0", {"DIAGLOG_DASHBOARD_TOKEN": "operator-secret-1"})
    assert "DIAGLOG_DASHBOARD_TOKEN" not in config
    app = make(
        made,
        tmp_path,
        **{**config, "DIAGLOG_CONSOLE": False, "DIAGLOG_DASHBOARD_TOKEN": "operator-secret-1"},
    )
    text = banner(app, "0.0.0.0", 8000)
    assert "operator-secret-1" not in text and "?token=<your DIAGLOG_DASHBOARD_TOKEN>" in text


@pytest.mark.slow
def test_make_demo_prints_the_dashboard_url_and_serves_it(tmp_path: Path) -> None:
    """``python -m example_app`` (what ``make demo`` runs) prints the dashboard's URL at startup,
    and that URL answers."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIAGLOG_")}
    env["DIAGLOG_LOG_DIR"] = str(tmp_path / "logs")
    proc = subprocess.Popen(
        [sys.executable, "-m", "example_app", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        url = None
        for line in proc.stderr:
            if line.startswith("dashboard: "):
                url = line.split(" ", 1)[1].strip()
                break
        assert url == f"http://127.0.0.1:{port}/_diaglog/"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    assert resp.status == 200 and b"<html" in resp.read().lower()
                break
            except urllib.error.URLError:
                assert time.monotonic() < deadline, "the demo never served its dashboard"
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(30)
        if proc.stderr is not None:
            proc.stderr.close()
