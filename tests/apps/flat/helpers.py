"""Helpers of the flat-layout test app: a module logger outside any package."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)  # "helpers": no package, not the app's logger


def work(n: str) -> None:
    """Called from a view: one INFO line, and an ERROR line when asked."""
    log.info("helper info %s", n)
    if n == "fail":
        log.error("helper error %s", n)


def background(job_id: str) -> None:
    """Background work: one INFO and one ERROR line."""
    log.info("background info %s", job_id)
    log.error("background error %s", job_id)
