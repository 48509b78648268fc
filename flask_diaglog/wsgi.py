"""The WSGI wrapper around ``app.wsgi_app``: the trace, the response headers and the end line.

It creates the :class:`~flask_diaglog.context.Trace` of each request (request id, start time),
adds ``X-Request-ID`` and ``Server-Timing`` to the response headers, and records the end line
when Flask returns or, for a streamed body, when the server closes the body. The start line and
the job id are the business of :mod:`.hooks`, which run after URL matching.

Wrapping ``wsgi_app`` rather than using three Flask hooks keeps most of the per-request work out
of Flask's hook dispatch (measured: see the performance page of the docs).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from time import perf_counter
from typing import TYPE_CHECKING, Any

from flask import request

from .context import Trace, is_valid_id, new_request_id, reset_trace, set_trace, traceparent_id
from .redact import Redactor
from .timing import server_timing_header
from .trail import request_end_msg, request_error_msg

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from .record import Recorder

__all__ = ["BODY_LOOKUP_MAX", "RequestTrail"]

#: Bodies larger than this are not parsed for a ``job_id`` field or shown in error lines.
BODY_LOOKUP_MAX = 1024 * 1024
_INFO = logging.INFO
_WARNING = logging.WARNING
_ERROR = logging.ERROR


class RequestTrail:
    """The request side of one app: the WSGI wrapper (``__call__``) and the end and error lines.

    :param wsgi_app: the wrapped ``app.wsgi_app``.
    :param rec: the app's recorder.
    :param redactor: scrubs queries, headers and bodies.
    :param exclude: path prefixes that are not observed at all.
    """

    def __init__(
        self,
        wsgi_app: WSGIApplication,
        rec: Recorder,
        redactor: Redactor,
        *,
        exclude: tuple[str, ...] = (),
        server_timing: bool = True,
        slow_ms: float = 0.0,
    ) -> None:
        self.wsgi_app = wsgi_app
        self.rec = rec
        self.redactor = redactor
        self.exclude = exclude
        self.server_timing = server_timing
        self.slow_ms = slow_ms

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        # The hot path of every request: kept to plain attribute and dict operations.
        path = environ.get("PATH_INFO", "")
        if self.exclude and path.startswith(self.exclude):
            return self.wsgi_app(environ, start_response)
        rid = environ.get("HTTP_X_REQUEST_ID")
        if rid is None or not is_valid_id(rid):
            tp = environ.get("HTTP_TRACEPARENT")
            rid = (traceparent_id(tp) if tp else None) or new_request_id()
        trace = Trace(self.rec, "request", rid, None, environ.get("REQUEST_METHOD"), path)
        server_timing = self.server_timing

        def _start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            trace.status = int(status[:3])
            headers.append(("X-Request-ID", rid))
            if server_timing:
                if trace.stages:
                    headers.append(("Server-Timing", server_timing_header(trace)))
                else:  # the common case, inlined: total only
                    ms = (perf_counter() - trace.t0) * 1000.0
                    headers.append(("Server-Timing", f"total;dur={ms:.1f}"))
            return start_response(status, headers, exc_info)

        token = set_trace(trace)
        try:
            body = self.wsgi_app(environ, _start_response)
        except BaseException as exc:
            # Propagated (TESTING or PROPAGATE_EXCEPTIONS): the end line still gets written.
            self.finish(trace, exc)
            raise
        finally:
            reset_trace(token)
        if trace.streamed:
            return _StreamedBody(body, trace, self)
        self.finish(trace, None)
        return body

    def finish(self, trace: Trace, exc: BaseException | None, aborted: bool = False) -> None:
        """Record the end line (and the error line if not recorded yet); free the job."""
        try:
            if exc is not None and trace.error is not exc:
                self.error(trace, exc)
            status = trace.status
            if exc is not None or status is None:
                status = 500 if exc is not None or trace.error is not None else status
            ms = (perf_counter() - trace.t0) * 1000.0
            slow = self.slow_ms
            is_slow = bool(slow and ms >= slow)
            level = _WARNING if (status is not None and status >= 500) or is_slow else _INFO
            hung = trace.hung
            if trace.stages or aborted or hung or is_slow:
                totals = trace.stage_totals() if trace.stages else None
                msg = request_end_msg(
                    trace.method, trace.path, status, ms, totals,
                    aborted=aborted, hung=hung, slow=is_slow,
                )  # fmt: skip
                fields: tuple[Any, ...] = (
                    trace.method, trace.path, status, ms, totals,
                    aborted or None, hung or None, is_slow or None,
                )  # fmt: skip
            else:  # the common case
                msg = request_end_msg(trace.method, trace.path, status, ms)
                fields = (trace.method, trace.path, status, ms)
            self.rec.record("request_end", trace, level, msg, fields)
        finally:
            lease = trace.lease
            if lease is not None:
                trace.lease = None
                lease.release()

    def error(self, trace: Trace, exc: BaseException) -> None:
        """Record the error line of an unhandled exception, with headers, body and traceback."""
        trace.error = exc
        rec = self.rec
        error = rec.error_text(exc)
        fields: dict[str, Any] = {"method": trace.method, "path": trace.path, "error": error}
        try:
            req = request._get_current_object()  # type: ignore[attr-defined]
        except RuntimeError:
            req = None
        if req is not None:
            fields["headers"] = self.redactor.headers(req.headers.items())
            if req.is_json and (req.content_length or 0) <= BODY_LOOKUP_MAX:
                try:
                    body = req.get_json(silent=True)
                except RecursionError:  # a deeply nested body: not shown
                    body = None
                if body is not None:
                    fields["body"] = self.redactor.data(body)
        rec.record(
            "request_error",
            trace,
            _ERROR,
            request_error_msg(trace.method, trace.path, error),
            fields,
            exc=rec.format_exc(exc),
        )


class _StreamedBody:
    """Wraps a streamed body: runs each chunk inside the request's trace, ends at ``close()``."""

    def __init__(self, body: Iterable[bytes], trace: Trace, owner: RequestTrail) -> None:
        self._body = body
        self._it: Iterator[bytes] | None = None
        self._trace = trace
        self._owner = owner
        self._done = False
        self._exhausted = False
        self._error: BaseException | None = None

    def __iter__(self) -> _StreamedBody:
        return self

    def __next__(self) -> bytes:
        token = set_trace(self._trace)
        try:
            if self._it is None:
                self._it = iter(self._body)
            return next(self._it)
        except StopIteration:
            self._exhausted = True
            raise
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            reset_trace(token)

    def close(self) -> None:
        if self._done:
            return
        self._done = True
        token = set_trace(self._trace)
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            reset_trace(token)
            aborted = not self._exhausted and self._error is None
            self._owner.finish(self._trace, self._error, aborted=aborted)
