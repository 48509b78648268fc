"""The Flask hooks of a request: the final status, the job id once known, the error line.

* Flask's ``got_request_exception`` signal gives the unhandled exception for the error line.
* ``app.process_response``, wrapped, says whether the final response streams its body
  (its body is not a list): a generator with a ``Content-Length`` the view set (a proxied
  download of known size) is streamed, though its headers look like a buffered body's.
* Only with ``DIAGLOG_STRICT_IDS``: one ``before_request`` function, run before any other, answers
  400 for an invalid job id on every route.

The job-id lookup is :mod:`.jobids`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, got_request_exception, request

from .context import current_trace
from .jobids import JobIdGetter, lookup_job_id, settle
from .wsgi import BUFFERED

if TYPE_CHECKING:
    from .wsgi import RequestTrail

__all__ = ["JobIdGetter", "lookup_job_id", "register"]


def register(
    app: Flask, trail: RequestTrail, getter: JobIdGetter | None, *, strict: bool = False
) -> Callable[..., None]:
    """Install the hooks of ``trail`` on ``app``. Returns the exception receiver, which the caller
    must keep alive (blinker holds it weakly, so a discarded app is not kept by the signal)."""
    rec = trail.rec

    def on_exception(sender: Flask, exception: BaseException, **_: Any) -> None:
        trace = current_trace()
        if trace is not None and trace.rec is rec and trace.error is not exception:
            trail.error(trace, exception)

    if strict:

        def diaglog_strict_ids() -> None:
            trace = current_trace()
            if trace is None or trace.rec is not rec:
                return
            req = request._get_current_object()  # type: ignore[attr-defined]
            settle(trace, req)
            # An invalid id is a 400 (InvalidJobId), as on @guard_job views.
            trace.job_id = lookup_job_id(req, getter)

        app.before_request_funcs.setdefault(None, []).insert(0, diaglog_strict_ids)
    process = app.process_response

    def process_response(response: Response) -> Response:
        response = process(response)
        trace = current_trace()
        if trace is not None and trace.rec is rec:
            # Not is_streamed: an HTTPException's response (abort, a 500) wraps a buffered body
            # in a ClosingIterator, which is_streamed counts as streamed.
            trace.streamed = type(response.response) not in BUFFERED  # _start_response reads it
        return response

    app.process_response = process_response  # type: ignore[method-assign]
    # Weakly connected (blinker's global registry must not keep the app alive).
    got_request_exception.connect(on_exception, app)
    return on_exception
