"""A small page that follows one generation job live, over the ``/diaglog`` Socket.IO namespace.

Wiring (in ``create_app``): create ``SocketIO(app)`` before ``diaglog.init_app(app)``, build the
extension with ``DiagLog(live_auth=allow_live, live_subscribe=allow_room)``, set a ``SECRET_KEY``,
record each upload's :func:`viewer` as its job's ``owner``, and register ``bp``.

Auth: opening ``/live`` gives the browser's session a random viewer id; :func:`allow_live` admits
Socket.IO clients whose handshake carries that session cookie, and :func:`allow_room` lets them
follow only the jobs of images that session uploaded (no other job, request, level or ``all``).
Other clients (scripts) use ``DIAGLOG_LIVE_TOKEN``.
"""

from __future__ import annotations

import secrets
from typing import Any

from flask import Blueprint, current_app, render_template, session

__all__ = ["allow_live", "allow_room", "bp", "viewer"]

bp = Blueprint(
    "live",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/live/static",
)

_SESSION_KEY = "diaglog_live"


@bp.get("/live")
def live() -> str:
    """The live progress page."""
    if viewer() is None:
        session[_SESSION_KEY] = secrets.token_urlsafe(16)
    return render_template(
        "live.html",
        namespace=current_app.config.get("DIAGLOG_LIVE_NAMESPACE", "/diaglog"),
    )


def viewer() -> str | None:
    """The viewer id ``/live`` gave this browser session (in its signed cookie), or ``None``."""
    value = session.get(_SESSION_KEY)
    return value if isinstance(value, str) else None


def allow_live(auth: Any) -> bool:
    """``DiagLog(live_auth=...)``: admit browsers that opened the live page in this session."""
    return viewer() is not None


def allow_room(kind: str, value: str | None) -> bool:
    """``DiagLog(live_subscribe=...)``: a browser may follow a job whose image its session
    uploaded (the job record's ``owner``), and nothing else."""
    me = viewer()
    if kind != "job" or value is None or me is None:
        return False
    record = current_app.extensions["example_jobs"].get(value)
    return record is not None and record.get("owner") == me
