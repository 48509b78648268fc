"""The opt-in dashboard: its blueprint, pages and JSON API.

Enabled with ``DIAGLOG_DASHBOARD=True`` at ``DIAGLOG_DASHBOARD_URL`` (default ``/_diaglog``).
Who may see it is :mod:`.access`'s business. The pages and the API read the shared log files
through one :class:`~.index.Index` per app (every worker's lines), and in-flight work through
the ``inflight`` callable: by default a :class:`~flask_diaglog.peers.Peers` that merges the
state files of every worker. Pages (``/``, ``/requests``, ``/route``, ``/trace/<id>``) and the
API (``/api/...``) are computed by :mod:`.queries` from the same data; charts are server-side
SVG (:mod:`.charts`). Bad parameters get a 400 problem+json naming the parameter.

Pages stay live by fetching themselves again and swapping their ``data-live`` parts: on each
event of the app's Socket.IO stream when it has one (``live``), with a slow poll as a safety net,
else (and whenever the socket is down) by a poll every :data:`LIVE_MS`.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from flask import Blueprint, g, jsonify, redirect, render_template, request, url_for
from flask.blueprints import BlueprintSetupState
from werkzeug.exceptions import HTTPException, default_exceptions
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.wrappers import Response

from ..attempts import Attempts
from ..escapes import ESCAPES
from ..peers import Peers
from ..problems import problem_response
from ..trail import LEVELS
from . import charts, queries
from .access import refusal, remember, security_headers, socket_admission, without_token
from .filters import (
    InvalidParameter,
    parse_filters,
    parse_id,
    parse_int,
    parse_route,
    parse_time,
)
from .index import Index

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["create_blueprint", "socket_admission"]

#: Seconds a page or API call may spend reading new log bytes before it answers.
READ_BUDGET = 0.15
#: Milliseconds between two live refreshes of a page (faster while the files are being read).
LIVE_MS = 2000
CATCH_UP_MS = 400
#: Milliseconds between two safety-net refreshes while the live socket is connected.
SOCKET_POLL_MS = 30000
_PROBLEM = "urn:flask-diaglog:problem:"
#: What a page never shows raw: the characters the plain layout escapes (C0 and C1 controls,
#: DEL, U+2028/9, and the bidirectional controls that reorder the text shown after them, "Trojan
#: Source"), but the newline and tab of the page's own markup and of a traceback's ``<pre>``.
_UNSHOWN = re.compile(
    "[" + "".join(re.escape(chr(c)) for c in sorted(ESCAPES) if c not in (0x09, 0x0A)) + "]"
)


#: A form field's value (Jinja writes ``"`` in it as ``&#34;``), or one :data:`_UNSHOWN` character.
_VALUE_OR_UNSHOWN = re.compile(r'( value="[^"]*")|' + _UNSHOWN.pattern)


def _shown(html: str) -> str:
    """A rendered page with the :data:`_UNSHOWN` characters of the log lines' text (messages,
    paths, ids, errors, stage and job names, and any other) written as the plain layout writes
    them: U+202E as ``\\u202e``. Jinja escapes markup, never these. In a form field's value
    they are character references (``&#x202e;``): the field holds what was asked for, so a
    filter for such a character survives the next submit."""
    if _UNSHOWN.search(html) is None:  # the common page: one quick scan
        return html
    return _VALUE_OR_UNSHOWN.sub(_show, html)


def _show(m: re.Match[str]) -> str:
    value = m[1]
    if value is None:
        return ESCAPES[ord(m[0])]
    return _UNSHOWN.sub(lambda c: f"&#x{ord(c[0]):x};", value)


def _time(ts: float | None) -> str:
    if not ts:
        return ""
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _http_problem(status: int, detail: str | None = None) -> Response:
    """Werkzeug's error ``status`` as problem+json: the dashboard answers no error in HTML."""
    exc = default_exceptions.get(status)
    title = HTTP_STATUS_CODES.get(status, "Error")
    return problem_response(status, title, detail or (exc.description if exc else None) or title)


def _bad(exc: InvalidParameter) -> Response:
    return problem_response(
        400,
        "Invalid parameter",
        exc.detail,
        type_=_PROBLEM + "invalid-parameter",
        parameter=exc.parameter,
    )


def create_blueprint(
    settings: Settings,
    stats: Callable[[], dict[str, Any]],
    inflight: Callable[[], list[dict[str, Any]]],
    *,
    peers: Peers | None = None,
    live: Mapping[str, str] | None = None,
    attempts: Attempts | None = None,
) -> Blueprint:
    """The dashboard for one app.

    :param settings: the app's settings (``dashboard_url``, ``dashboard_token``, ``log_dir``).
    :param stats: returns the app's counters (``DiagLog.stats``).
    :param inflight: returns this process's in-flight entries.
    :param peers: merges every worker's in-flight entries; by default one is made from
        ``inflight`` and started when the blueprint is registered (it stops with the app).
    :param live: the app's Socket.IO stream, ``{"path": ..., "namespace": ...}`` (see
        :func:`flask_diaglog.live.page_options`): pages refresh on its events. Its connect check
        must admit the dashboard's viewers: :func:`socket_admission`.
    :param attempts: the refused credentials of each client (token guessing), shared with that
        check; by default the blueprint's own.
    """
    bp = Blueprint(
        "diaglog_dashboard",
        __name__,
        template_folder="templates",
        static_folder="static",
        url_prefix=settings.dashboard_url,
    )
    if peers is None:
        peers = Peers(settings.log_dir, inflight)

        def start(state: BlueprintSetupState) -> None:
            peers.start()  # it stops when it is discarded with the app (see peers.py)

        bp.record_once(start)
    if attempts is None:
        attempts = Attempts()
    index = Index(settings.log_dir)
    token = settings.dashboard_token
    socket_path = live["path"] if live else None
    prefix = settings.dashboard_url.rstrip("/")

    def all_inflight() -> list[dict[str, Any]]:
        """Every worker's in-flight entries, read once per request."""
        entries: list[dict[str, Any]] | None = g.get("diaglog_inflight")
        if entries is None:
            entries = g.diaglog_inflight = peers.merged()
        return entries

    def status() -> dict[str, Any]:
        """How far the log files are read, and what of them (and of the other workers' state
        files) cannot be shown."""
        total = index.total or 1
        all_inflight()  # which state files it ignores
        return {
            "complete": index.complete,
            "indexed": round(1.0 - index.pending / total, 4) if index.total else 1.0,
            "lines": index.lines,
            "skipped_lines": index.skipped,
            "damaged_files": index.damaged,
            "unreadable_files": index.unreadable,
            "ignored_state_files": sorted(peers.ignored),
            "problem": index.problem,
        }

    def unchanged(*shown: object) -> Response | None:
        """A 304 for a live poll when the page would be what the browser already has: the
        index has not changed, nor the minute, nor what else the page shows (``shown``)."""
        state = (request.full_path, index.version, status())
        key = repr((*state, int(time.time() // 60), shown)).encode()
        tag = hashlib.sha256(key).hexdigest()[:24]
        g.diaglog_etag = tag
        if tag in request.if_none_match:
            return Response(status=304)
        return None

    def page(template: str, name: str, follow: str = "all", **context: Any) -> str:
        """Render a page; ``follow`` is the id whose events refresh it (``all``: every event)."""
        st = status()
        return _shown(
            render_template(
                f"diaglog/{template}",
                page=name,
                index=st,
                log_dir=settings.log_dir,
                live_interval=LIVE_MS if st["complete"] else CATCH_UP_MS,
                socket_interval=SOCKET_POLL_MS if st["complete"] else CATCH_UP_MS,
                live_socket=live and {**live, "path": request.script_root + live["path"]},
                follow=follow,
                **context,
            )
        )

    @bp.app_template_filter("diaglog_time")
    def time_filter(ts: float | None) -> str:
        return _time(ts)

    api = prefix + "/api/"

    @bp.before_request
    def guard() -> Response | None:
        refused = refusal(request, token, attempts)
        if refused is not None:
            return refused
        if token is not None and not request.path.startswith(api):
            clean = without_token(request)
            if clean is not None:  # the cookie is set on the way (headers() below)
                return redirect(clean, 303)
        if request.endpoint != "diaglog_dashboard.static":
            index.refresh(READ_BUDGET)
        return None

    @bp.after_request
    def headers(response: Response) -> Response:
        if response.status_code < 400:
            remember(request, response, token, settings.dashboard_url, socket_path)
        tag = g.get("diaglog_etag")
        if tag is not None:
            response.set_etag(tag)
        response.headers.update(security_headers(request.host if live else None))
        return response

    @bp.after_app_request
    def unrouted(response: Response) -> Response:
        """A request under the dashboard's URL that no rule of it takes as asked (a 405, the 308
        that adds the final slash) never reaches the hooks above: it is refused, or given the
        headers, here. Any other request of the app leaves at the first test."""
        if request.url_rule is not None:
            return response
        path = request.path
        if path != prefix and not path.startswith(prefix + "/"):
            return response
        refused = refusal(request, token, attempts)
        if refused is not None:
            response = refused
        elif response.status_code in (404, 405):  # Flask's HTML page: the same answer as JSON
            allow = response.headers.get("Allow")
            response = _http_problem(response.status_code)
            if allow is not None:
                response.headers["Allow"] = allow
        response.headers.update(security_headers())
        return response

    @bp.errorhandler(InvalidParameter)
    def invalid(exc: InvalidParameter) -> Response:
        return _bad(exc)

    @bp.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:  # e.g. a static file that is not there
        return _http_problem(exc.code or 500, exc.description)

    # -- pages ----------------------------------------------------------------------------------

    @bp.get("/")
    def overview() -> str | Response:
        inflight = all_inflight()
        same = unchanged(inflight)
        if same is not None:
            return same
        ov = queries.overview(index)
        labels = [_time(t)[11:16] for t in ov["minutes"]]
        chart = {
            "rpm": charts.line_chart(
                "requests per minute", [("requests", ov["requests_per_minute"])], labels
            ),
            "errors": charts.line_chart("error rate", [("errors", ov["error_rate"])], labels, "%"),
            "latency": charts.line_chart(
                "latency",
                [("p50", ov["p50_ms"]), ("p95", ov["p95_ms"]), ("p99", ov["p99_ms"])],
                labels,
                " ms",
                width=1280,
            ),
        }
        return page(
            "overview.html",
            "overview",
            ov=ov,
            charts=chart,
            inflight=inflight,
            recent=ov["recent"],
        )

    @bp.get("/requests")
    def requests_page() -> str | Response:
        f = parse_filters(request.args)
        same = unchanged()
        if same is not None:
            return same
        items, total = queries.select(index, f)
        return page(
            "requests.html",
            "requests",
            f=f,
            items=[i.to_dict() for i in items],
            total=total,
            pages=max(1, -(-total // f.per_page)),
            levels=list(LEVELS),
        )

    @bp.get("/route")
    def route_page() -> str | Response:
        same = unchanged()
        if same is not None:
            return same
        rs = _route_stats()
        ms_unit = " ms"
        chart = {
            "histogram": charts.histogram(
                "latency histogram", [(h["le"], h["count"]) for h in rs["histogram"]]
            ),
            "over_time": charts.line_chart(
                "percentiles over time",
                [(k[:3], [b[k] for b in rs["over_time"]]) for k in ("p50_ms", "p95_ms", "p99_ms")],
                [_time(b["ts"])[11:19] for b in rs["over_time"]],
                ms_unit,
            ),
            "status": charts.bars(
                "status mix", [(k, float(v)) for k, v in rs["status_mix"].items()]
            ),
            "stages": charts.bars("average stages", list(rs["stages_avg_ms"].items()), ms_unit),
        }
        return page("route.html", "route", rs=rs, charts=chart)

    @bp.get("/trace/<trace_id>")
    def trace_page(trace_id: str) -> tuple[str, int] | Response:
        parse_id(trace_id, "id")
        same = unchanged()
        if same is not None:
            return same
        d = _detail(trace_id)
        if d is not None:
            for s in d["sections"]:
                item = s["item"]
                s["chart"] = charts.waterfall(float(item.get("duration_ms") or 0.0), s["waterfall"])
                s["jobs"] = [
                    {"index": n, "item": other["item"]}
                    for n, other in enumerate(d["sections"], start=1)
                    if other["item"]["kind"] == "job"
                    and item["kind"] == "request"
                    and other["item"].get("request_id") == item.get("request_id")
                ]
        with index.lock:  # the list has every row the page leaves out
            named = bool(index.by_request.get(trace_id))
        list_url = (
            url_for(".requests_page", request_id=trace_id)
            if named
            else url_for(".requests_page", job_id=trace_id)
        )
        page_html = page("trace.html", "trace", trace_id, d=d, trace_id=trace_id, list_url=list_url)
        return page_html, 200 if d else 404

    @bp.get("/<path:rest>")
    def not_found(rest: str) -> Response:
        return problem_response(404, "Not found", "The dashboard has no page at this URL.")

    # -- JSON API -------------------------------------------------------------------------------

    def _route_stats() -> dict[str, Any]:
        route = parse_route(request.args.get("route", ""))
        if not route or len(route) > 512:
            raise InvalidParameter("route", "'route' must name a route such as 'GET /api/<id>'.")
        since = request.args.get("since")
        until = request.args.get("until")
        return queries.route_stats(
            index,
            route,
            parse_time(since, "since") if since else None,
            parse_time(until, "until") if until else None,
        )

    def _detail(trace_id: str) -> dict[str, Any] | None:
        return queries.detail(index, parse_id(trace_id, "id"))

    @bp.get("/api/state")
    def api_state() -> Response:
        limit = parse_int(request.args, "limit", 50, 1, 500)
        items, _ = queries.select(index, parse_filters({"per_page": str(limit)}))
        return jsonify(
            {
                "now": time.time(),
                "inflight": all_inflight(),
                "recent": [i.to_dict() for i in items],
                "stats": stats(),
                "index": status(),
            }
        )

    @bp.get("/api/inflight")
    def api_inflight() -> Response:
        return jsonify({"now": time.time(), "inflight": all_inflight(), "index": status()})

    @bp.get("/api/overview")
    def api_overview() -> Response:
        return jsonify({**queries.overview(index), "inflight": all_inflight(), "index": status()})

    @bp.get("/api/requests")
    def api_requests() -> Response:
        f = parse_filters(request.args)
        items, total = queries.select(index, f)
        return jsonify(
            {
                "items": [i.to_dict() for i in items],
                "total": total,
                "page": f.page,
                "per_page": f.per_page,
                "filters": f.params(),
                "index": status(),
            }
        )

    @bp.get("/api/route")
    def api_route() -> Response:
        return jsonify({**_route_stats(), "index": status()})

    @bp.get("/api/trace/<trace_id>")
    def api_trace(trace_id: str) -> Response:
        d = _detail(trace_id)
        if d is None:
            return problem_response(
                404,
                "Unknown id",
                f"No line of the log files names {trace_id!r}"
                + ("" if index.complete else " yet: the files are still being read")
                + ".",
                type_=_PROBLEM + "unknown-id",
                parameter="id",
            )
        return jsonify({**d, "index": status()})

    return bp
