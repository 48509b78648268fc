"""An opt-in dashboard: in-flight requests and jobs of this process, and recent requests.

Enabled with ``DIAGLOG_DASHBOARD=True`` at ``DIAGLOG_DASHBOARD_URL`` (default ``/_diaglog``). It
answers only loopback clients unless ``DIAGLOG_DASHBOARD_TOKEN`` is set, in which case it needs
that token (``?token=`` once, which sets a cookie, or an ``Authorization: Bearer`` header). Its own
requests are not logged. "Recent" is read from the tail of ``requests.log``, so under gunicorn it
shows every worker's requests; "in flight" is the registry of the worker that answers.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Blueprint, abort, jsonify, render_template, request
from werkzeug.wrappers import Response

from ..logread import tail_records
from ..problems import problem_response

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["create_blueprint"]

_COOKIE = "diaglog_dashboard"
_LOOPBACK = ("127.", "::1", "::ffff:127.")


def _allowed(settings: Settings) -> bool:
    token = settings.dashboard_token
    if token is None:
        addr = request.remote_addr or ""
        return addr.startswith(_LOOPBACK)
    given = (
        request.args.get("token")
        or request.cookies.get(_COOKIE)
        or request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    )
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


def create_blueprint(
    settings: Settings,
    stats: Callable[[], dict[str, Any]],
    inflight: Callable[[], list[dict[str, Any]]],
) -> Blueprint:
    """The dashboard for one app: its settings, a ``stats()`` and an ``inflight()`` callable."""
    bp = Blueprint(
        "diaglog_dashboard",
        __name__,
        template_folder="templates",
        static_folder="static",
        url_prefix=settings.dashboard_url,
    )

    @bp.before_request
    def guard() -> Response | None:
        if not _allowed(settings):
            return problem_response(
                403,
                "Dashboard access denied",
                "The diaglog dashboard answers loopback clients only, or clients that present "
                "DIAGLOG_DASHBOARD_TOKEN (?token=... or Authorization: Bearer ...).",
            )
        return None

    @bp.after_request
    def remember_token(response: Response) -> Response:
        token = request.args.get("token")
        if token and settings.dashboard_token:
            response.set_cookie(_COOKIE, token, httponly=True, samesite="Strict")
        response.headers["Cache-Control"] = "no-store"
        return response

    @bp.get("/")
    def page() -> str:
        return render_template("diaglog/dashboard.html", api=f"{bp.url_prefix}/api/state")

    @bp.get("/api/state")
    def api_state() -> Response:
        try:
            limit = min(max(int(request.args.get("limit", "50")), 1), 500)
        except ValueError:
            abort(problem_response(400, "Invalid limit", "'limit' must be a whole number."))
        recent: list[dict[str, Any]] = []
        for rec in reversed(tail_records(settings.log_dir, "requests")):
            if rec.event in ("request_end", "request_error", "job_rejected", "hang"):
                recent.append({**rec.data, "ts": rec.ts})
                if len(recent) >= limit:
                    break
        return jsonify(
            {
                "now": time.time(),
                "inflight": inflight(),
                "recent": recent,
                "stats": stats(),
            }
        )

    return bp
