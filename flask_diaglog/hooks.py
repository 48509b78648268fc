"""The Flask hooks of a request: the final status, the job id once known, the error line.

* One ``after_request`` function, run after all others, notes the final status and whether the
  body is streamed, and resolves the job id the URL or a body the view read may give (the end
  line carries it).
* Flask's ``got_request_exception`` signal gives the unhandled exception for the error line.
* Only with ``DIAGLOG_STRICT_IDS``: one ``before_request`` function, run before any other, answers
  400 for an invalid job id on every route.

The job-id lookup is :mod:`.jobids`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Flask, got_request_exception, request
from flask.wrappers import Response
from werkzeug.wsgi import ClosingIterator

from .context import current_trace
from .jobids import JobIdGetter, lookup_job_id

if TYPE_CHECKING:
    from .wsgi import RequestTrail

__all__ = ["JobIdGetter", "lookup_job_id", "register"]


def register(
    app: Flask, trail: RequestTrail, getter: JobIdGetter | None, *, strict: bool = False
) -> Callable[..., None]:
    """Install the hooks of ``trail`` on ``app``. Returns the exception receiver, which the caller
    must keep alive (blinker holds it weakly, so a discarded app is not kept by the signal)."""
    rec = trail.rec
    finish_ids = trail.job_ids.finish

    def diaglog_after_request(response: Response) -> Response:
        trace = current_trace()
        if trace is not None and trace.rec is rec:
            trace.status = response.status_code
            # HTTPException responses (404, 405, abort()) are pre-built bodies that Flask
            # wraps in a ClosingIterator: not streamed, so their end line is written now.
            trace.streamed = response.is_streamed and not isinstance(
                response.response, ClosingIterator
            )
            if trace.resolve is not None:
                finish_ids(trace)
        return response

    def on_exception(sender: Flask, exception: BaseException, **_: Any) -> None:
        trace = current_trace()
        if trace is not None and trace.rec is rec and trace.error is not exception:
            trail.error(trace, exception)

    if strict:

        def diaglog_strict_ids() -> None:
            trace = current_trace()
            if trace is None or trace.rec is not rec:
                return
            trace.resolve = None
            trace.bad_job_id = None
            # An invalid id is a 400 (InvalidJobId), as on @guard_job views.
            trace.job_id = lookup_job_id(request._get_current_object(), getter)  # type: ignore[attr-defined]

        app.before_request_funcs.setdefault(None, []).insert(0, diaglog_strict_ids)
    app.after_request_funcs.setdefault(None, []).insert(0, diaglog_after_request)
    # Weakly connected (blinker's global registry must not keep the app alive).
    got_request_exception.connect(on_exception, app)
    return on_exception
