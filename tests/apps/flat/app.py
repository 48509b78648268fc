"""A flat-layout app (app.py beside helpers.py), as tests run it: ``flask --app app run`` or
imported by ``main.py``. Configuration comes from ``DIAGLOG_*`` environment variables."""

from __future__ import annotations

import logging

import helpers
from flask import Flask, request

from flask_diaglog import DiagLog

log = logging.getLogger(__name__)  # "app" (or "__main__")

app = Flask(__name__)
diaglog = DiagLog(app)


@app.get("/hello")
def hello() -> dict[str, bool]:
    n = request.args.get("n", "")
    app.logger.warning("app line %s token=%s", n, request.args.get("token", "-"))
    helpers.work(n)
    return {"ok": True}


@app.get("/info")
def info() -> dict[str, bool]:
    app.logger.info("app info %s", request.args.get("n", ""))
    log.info("module info %s", request.args.get("n", ""))
    return {"ok": True}


@app.post("/jobs/<job_id>")
def job(job_id: str) -> tuple[dict[str, str], int]:
    diaglog.spawn(helpers.background, job_id)
    return {"job_id": job_id}, 202
