"""Example: a 2D-to-3D generation backend instrumented with flask-diaglog.

* ``POST /api/images`` (multipart field ``image``): validates a PNG/JPEG upload, returns a job id.
* ``POST /api/jobs/<job_id>/generate``: runs validate, preprocess, generate and postprocess in
  background work started with ``diaglog.spawn``; answers 202. Guarded: while that work runs, a
  second generate for the same job gets ``409`` problem+json.
* ``GET /api/jobs/<job_id>``: the job's status, current stage and progress; ``.../result`` the
  mesh (OBJ).
* ``GET /live``: a page that uploads an image and follows its generation live (Socket.IO), with a
  progress bar fed by ``progress`` events. A browser follows only the jobs its session uploaded.

Every error is problem+json (:mod:`example_app.errors`). Job records live in memory by default, so
``make demo`` needs no Redis; with ``DIAGLOG_JOB_STORE=redis://...`` they live in that Redis, and
``gunicorn -w N`` workers share uploads, job state and the 409 guard (docs/deployment.md).
"""

from __future__ import annotations

import os
import secrets
import uuid
from typing import Any

from flask import Flask, current_app, request, url_for
from flask_socketio import SocketIO
from werkzeug.wrappers import Response

from flask_diaglog import DiagLog, guard_job, set_job_id, stage
from flask_diaglog.problems import problem_response

from . import errors
from .live_page import allow_live, allow_room, viewer
from .live_page import bp as live_bp
from .pipeline import InvalidImage, decode, image_info, run_generation
from .store import JobStore, open_store

# Live events: browsers that opened /live may follow the jobs they uploaded; scripts use
# DIAGLOG_LIVE_TOKEN, the dashboard's viewers its token (both: every event).
diaglog = DiagLog(live_auth=allow_live, live_subscribe=allow_room)

MAX_UPLOAD = 10 * 1024 * 1024


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_UPLOAD,
        EXAMPLE_GENERATE_SECONDS=2.0,
        DIAGLOG_EXCLUDE="/healthz,/static,/live/static",
        # The live page's auth uses the session. Set SECRET_KEY in production; the random
        # fallback is fine for one demo process.
        SECRET_KEY=os.environ.get("SECRET_KEY") or secrets.token_hex(16),
    )
    app.config.update(config or {})
    SocketIO(app, async_mode="threading")  # before init_app: DiagLog finds it and streams events
    diaglog.init_app(app)
    app.register_blueprint(live_bp)
    errors.register(app)
    # The job records follow the job guard's store: memory for one process, else the same Redis
    # (DIAGLOG_JOB_STORE, resolved by init_app from the environment or the config).
    store = open_store(app.config["DIAGLOG_JOB_STORE"])
    app.extensions["example_jobs"] = store
    if _runner(app) == "celery":  # generation runs on a Celery worker (docs/workers.md)
        from . import tasks

        tasks.init(app)

    @app.get("/")
    def index() -> dict[str, Any]:
        return {
            "service": "2D-to-3D generation (flask-diaglog example)",
            "upload": url_for("upload"),
            "generate": "/api/jobs/<job_id>/generate",
            "status": "/api/jobs/<job_id>",
            "live": url_for("live.live"),
        }

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/api/images")
    def upload() -> Response | tuple[dict[str, Any], int]:
        file = request.files.get("image")
        if file is None:
            return problem_response(
                400, "Missing image", "Send the image as the multipart form field 'image'."
            )
        with stage("validate_upload"):
            data = file.read()
            if not data:
                return problem_response(400, "Empty image", "The uploaded file is empty.")
            try:
                info = image_info(decode(data))
            except InvalidImage as exc:
                return problem_response(exc.status, exc.title, str(exc))
        job_id = uuid.uuid4().hex[:16]
        set_job_id(job_id)  # this request's later lines and its end line carry the new job id
        record = store.create(job_id, data, info, owner=viewer())  # who may follow it live
        app.logger.info("stored upload %s (%s, %d bytes)", job_id, info["format"], len(data))
        return {"job_id": job_id, "status": record["status"], "image": info}, 201

    @app.post("/api/jobs/<job_id>/generate")
    @guard_job  # a second generate for a job that is still running gets 409
    def generate(job_id: str) -> Response | tuple[dict[str, Any], int]:
        record = store.get(job_id)
        if record is None:
            return problem_response(404, "Unknown job", f"No uploaded image has job id {job_id}.")
        options = errors.json_object()  # 400/415 problem+json for a body that is not one
        resolution = options.get("resolution", 16)
        if type(resolution) is not int or not 2 <= resolution <= 128:
            return problem_response(
                422, "Invalid options", "'resolution' must be a whole number from 2 to 128."
            )
        store.update(job_id, status="queued", stage=None, error=None, progress=None)
        start_generation(store, job_id, {"resolution": resolution})
        return {
            "job_id": job_id,
            "status": "queued",
            "status_url": url_for("job_status", job_id=job_id),
        }, 202

    @app.get("/api/jobs/<job_id>")
    def job_status(job_id: str) -> Response | dict[str, Any]:
        record = store.get(job_id)
        if record is None:
            return problem_response(404, "Unknown job", f"No job has id {job_id}.")
        record.pop("owner", None)  # the uploading session's viewer id stays on the server
        return record

    @app.get("/api/jobs/<job_id>/result")
    def job_result(job_id: str) -> Response:
        obj = store.result(job_id)
        if obj is None:
            return problem_response(404, "No result", f"Job {job_id} has no finished result.")
        return Response(obj, mimetype="model/obj")

    return app


def start_generation(store: JobStore, job_id: str, options: dict[str, Any]) -> None:
    """Hand one generation to background work: the one place that decides where it runs.

    By default ``diaglog.spawn`` runs it in a thread of this process (the guard keeps the job's
    lease until it ends). With ``EXAMPLE_RUNNER=celery`` it is sent to a Celery worker
    (``example_app/tasks.py``), which needs the Redis job records every process can read.
    """
    if _runner(current_app) == "celery":
        from .tasks import generate

        generate.delay(job_id, options)  # diaglog carries the ids and the job's lease across
        return
    diaglog.spawn(run_generation, store, job_id, options)


def _runner(app: Flask) -> str:
    """Where generation runs: ``thread`` (default, ``make demo``) or ``celery``
    (``EXAMPLE_RUNNER``, app config or environment)."""
    return str(app.config.get("EXAMPLE_RUNNER") or os.environ.get("EXAMPLE_RUNNER") or "thread")
