"""A script run as ``__main__`` (``python main.py``) beside helpers.py: its app is
``Flask(__name__)`` and its module logger is ``__main__``. It serves a few requests through the
test client and a background job, then exits. Configuration: ``DIAGLOG_*`` environment variables.
"""

from __future__ import annotations

import logging
import threading

import helpers
from flask import Flask

from flask_diaglog import DiagLog

log = logging.getLogger(__name__)  # "__main__"

app = Flask(__name__)
diaglog = DiagLog(app)


@app.get("/work/<n>")
def work(n: str) -> dict[str, bool]:
    log.info("main info %s", n)
    log.warning("main warning %s", n)
    app.logger.warning("app warning %s", n)
    helpers.work(n)
    return {"ok": True}


@app.post("/jobs/<job_id>")
def job(job_id: str) -> tuple[dict[str, str], int]:
    diaglog.spawn(helpers.background, job_id)
    return {"job_id": job_id}, 202


if __name__ == "__main__":
    client = app.test_client()
    for n in ("1", "fail"):
        client.get(f"/work/{n}", headers={"X-Request-ID": f"main-{n}"})
    client.post("/jobs/J7", headers={"X-Request-ID": "main-job"})
    for t in list(threading.enumerate()):
        if t.name.startswith("diaglog-job-"):
            t.join()
    log.info("outside any request")
