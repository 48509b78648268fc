"""A small page that follows one generation job live, over the ``/diaglog`` Socket.IO namespace.

Wiring (in ``create_app``): create ``SocketIO(app)`` before ``diaglog.init_app(app)``, build the
extension with ``DiagLog(live_auth=allow_live)``, set a ``SECRET_KEY``, and register ``bp``.

Auth: opening ``/live`` marks the browser's session; :func:`allow_live` admits Socket.IO clients
whose handshake carries that session cookie. Other clients (scripts) use ``DIAGLOG_LIVE_TOKEN``.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, render_template, session

__all__ = ["allow_live", "bp"]

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
    session[_SESSION_KEY] = True
    return render_template(
        "live.html",
        namespace=current_app.config.get("DIAGLOG_LIVE_NAMESPACE", "/diaglog"),
    )


def allow_live(auth: Any) -> bool:
    """``DiagLog(live_auth=...)``: admit browsers that opened the live page in this session."""
    return session.get(_SESSION_KEY) is True
