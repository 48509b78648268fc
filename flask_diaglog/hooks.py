"""The Flask hooks of a request: the job id, the start line, the final status, the error line.

* One ``before_request`` function, run before any other, resolves the job id (after URL matching,
  so a ``<job_id>`` view argument is seen) and records the start line before the view runs.
* One ``after_request`` function, run after all others, notes the final status and whether the
  body is streamed.
* Flask's ``got_request_exception`` signal gives the unhandled exception for the error line.

:func:`lookup_job_id` is the one job-id lookup; the job guard uses it too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Flask, got_request_exception, request
from flask.wrappers import Request, Response
from werkzeug.wsgi import ClosingIterator

from .context import current_trace, is_valid_id
from .problems import InvalidJobId
from .trail import request_start_msg
from .wsgi import BODY_LOOKUP_MAX

if TYPE_CHECKING:
    from .wsgi import RequestTrail

__all__ = ["JobIdGetter", "lookup_job_id", "register"]

JobIdGetter = Callable[[Request], "str | None"]
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
_INFO = logging.INFO


def register(
    app: Flask, trail: RequestTrail, getter: JobIdGetter | None, *, testing: bool
) -> Callable[..., None]:
    """Install the hooks of ``trail`` on ``app``. Returns the exception receiver, which the caller
    must keep alive (blinker holds it weakly, so a discarded app is not kept by the signal)."""
    rec = trail.rec
    redactor = trail.redactor
    testing_text = "true" if testing else "false"

    def diaglog_before_request() -> None:
        trace = current_trace()
        if trace is None or trace.rec is not rec:
            return None
        req = request._get_current_object()  # type: ignore[attr-defined]
        trace.path = path = req.path
        invalid: InvalidJobId | None = None
        try:
            trace.job_id = lookup_job_id(req, getter)
        except InvalidJobId as exc:
            invalid = exc  # the start line is still written, then the 400 is raised
        env = req.environ
        # The mimetype straight from the environ: req.mimetype parses the header options.
        ctype = env.get("CONTENT_TYPE")
        mimetype = ctype.partition(";")[0].strip().lower() or None if ctype else None
        client = env.get("REMOTE_ADDR")
        qs = env.get("QUERY_STRING")
        query = redactor.query(qs) if qs else None
        rec.record(
            "request_start",
            trace,
            _INFO,
            request_start_msg(
                trace.method, f"{path}?{query}" if qs else path, client, mimetype, testing_text
            ),
            (trace.method, path, query, client, mimetype, testing),
        )
        if invalid is not None:
            raise invalid
        return None

    def diaglog_after_request(response: Response) -> Response:
        trace = current_trace()
        if trace is not None and trace.rec is rec:
            trace.status = response.status_code
            # HTTPException responses (404, 405, abort()) are pre-built bodies that Flask
            # wraps in a ClosingIterator: not streamed, so their end line is written now.
            trace.streamed = response.is_streamed and not isinstance(
                response.response, ClosingIterator
            )
        return response

    def on_exception(sender: Flask, exception: BaseException, **_: Any) -> None:
        trace = current_trace()
        if trace is not None and trace.rec is rec and trace.error is not exception:
            trail.error(trace, exception)

    app.before_request_funcs.setdefault(None, []).insert(0, diaglog_before_request)
    app.after_request_funcs.setdefault(None, []).insert(0, diaglog_after_request)
    # Weakly connected (blinker's global registry must not keep the app alive).
    got_request_exception.connect(on_exception, app)
    return on_exception


def _idempotency_key(value: str) -> str:
    """The string of an ``Idempotency-Key`` structured-field string (quotes optional)."""
    v = value.strip()
    if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        return v[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return v


def lookup_job_id(req: Request, getter: JobIdGetter | None) -> str | None:
    """The job id of a request, from the documented sources in order; 400 when invalid.

    One function, not a lookup plus a validation call: it runs on every request, and a request
    without a job id (the common case) leaves after five dictionary lookups.
    """
    value: Any = None
    source = ""
    if getter is not None:
        value = getter(req)
        source = "the job id callable"
    else:
        va = req.view_args
        env = req.environ
        if va and "job_id" in va:
            value, source = va["job_id"], "the URL (job_id view argument)"
        elif (v := env.get("HTTP_X_JOB_ID")) is not None:
            value, source = v, "the X-Job-ID header"
        elif (v := env.get("HTTP_IDEMPOTENCY_KEY")) is not None:
            value, source = _idempotency_key(v), "the Idempotency-Key header"
        else:
            # CONTENT_LENGTH first: werkzeug's content_length parses headers (~1.5 µs).
            length = req.content_length if env.get("CONTENT_LENGTH") else None
            if length and length <= BODY_LOOKUP_MAX:
                if req.is_json:
                    try:
                        body = req.get_json(silent=True)
                    except RecursionError:  # a deeply nested body is no place for a job id
                        body = None
                    if isinstance(body, dict) and "job_id" in body:
                        value, source = body["job_id"], "the JSON body (job_id)"
                elif req.mimetype in _FORM_TYPES:
                    v = req.form.get("job_id")
                    if v is not None:
                        value, source = v, "the form field job_id"
            if not source and "job_id" in env.get("QUERY_STRING", ""):
                v = req.args.get("job_id")
                if v is not None:
                    value, source = v, "the query parameter job_id"
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not is_valid_id(value):
        shown = value if isinstance(value, str) else json.dumps(value, default=str)
        raise InvalidJobId(
            f"The job id from {source} is not valid: it must be 1 to 128 characters of "
            f"A-Z a-z 0-9 . _ : - (got {shown[:64]!r}).",
            source=source,
        )
    return value  # type: ignore[no-any-return]
