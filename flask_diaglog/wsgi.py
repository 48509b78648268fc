"""The WSGI wrapper around ``app.wsgi_app``: the trace, the start line, the headers, the end line.

For each request it creates the :class:`~flask_diaglog.context.Trace` (request id, start time)
and records the start line, which registers the request in flight, before Flask matches the URL
and before anything reads the body; adds ``X-Request-ID`` and ``Server-Timing`` to the response
headers (merged with the app's own, never duplicated); and records the end line when Flask
returns or, for a streamed body, when the server closes the body; a file body (``send_file``)
stays in the server's own ``wsgi.file_wrapper``, so the server still sends it its own way
(gunicorn: ``os.sendfile``), and only the file inside it is wrapped. The job id is resolved by
:class:`~flask_diaglog.jobids.JobIds`; the Flask-side hooks are in :mod:`.hooks`.

Wrapping ``wsgi_app`` rather than using Flask hooks keeps most of the per-request work out of
Flask's hook dispatch (measured: see the performance page of the docs). Even a URL value
preprocessor costs about 17 k instructions per request, for the two request proxies Flask reads
to call it; so the URL's job id and rule are taken lazily, from the first line after the match.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from time import perf_counter
from typing import TYPE_CHECKING, Any

from flask import request
from werkzeug.wsgi import ClosingIterator

from .context import Trace, is_valid_id, new_request_id, reset_trace, set_trace, traceparent_id
from .jobids import JobIds, body_json
from .redact import Redactor
from .timing import stage_entries
from .trail import format_float, request_end_msg, request_error_msg, request_start_msg

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from .record import Recorder

__all__ = ["RequestTrail", "excluded"]

_INFO = logging.INFO
_WARNING = logging.WARNING
#: Body types Flask returns for a buffered response (and plain WSGI apps for a list body); a
#: Flask response's own body (``response.response``) is one of them unless it streams.
BUFFERED = (ClosingIterator, list, tuple)
_ERROR = logging.ERROR


def excluded(prefixes: Iterable[str]) -> tuple[frozenset[str], tuple[str, ...]]:
    """The exact paths and the ``prefix/`` starts of ``prefixes``: a URL is excluded when it is
    one of the prefixes or lies below one, whole path segments only (``/_diaglog`` excludes
    ``/_diaglog/api`` but not ``/_diaglog-export``)."""
    exact = {p.rstrip("/") or "/" for p in prefixes if p}
    return frozenset(exact), tuple(p if p.endswith("/") else p + "/" for p in exact)


def _path(raw: str) -> str:
    """``PATH_INFO`` as Flask's ``request.path`` has it: UTF-8 decoded, one leading slash."""
    if not raw.isascii():
        raw = raw.encode("latin-1", "replace").decode("utf-8", "replace")
    if raw[:1] != "/" or raw[:2] == "//":
        raw = "/" + raw.lstrip("/")
    return raw


#: ``Trace(...)`` in two plain calls: ``type.__call__`` would look ``__init__`` up in the
#: type-attribute cache and call it through a new C-level frame (1.4 k instructions a request
#: more, measured under callgrind).
_new_trace = object.__new__
_init_trace = Trace.__init__


#: The largest JSON body (its Content-Length) an error line shows: a line stays well under the
#: readers' :data:`~flask_diaglog.readfile.MAX_LINE` (1 MiB), whatever the view accepted.
BODY_SHOWN_MAX = 256 * 1024


class RequestTrail:
    """The request side of one app: the WSGI wrapper (``__call__``) and the end and error lines.

    :param wsgi_app: the wrapped ``app.wsgi_app``.
    :param rec: the app's recorder.
    :param redactor: scrubs queries, headers and bodies.
    :param job_ids: the app's lenient job-id resolution.
    :param exclude: URL prefixes that are not observed at all (whole path segments).
    :param trust_request_id: use a valid incoming ``X-Request-ID`` (or ``traceparent``).
    :param testing: the app is under test (said on the start line).
    """

    def __init__(
        self,
        wsgi_app: WSGIApplication,
        rec: Recorder,
        redactor: Redactor,
        job_ids: JobIds,
        *,
        exclude: tuple[str, ...] = (),
        server_timing: bool = True,
        slow_ms: float = 0.0,
        trust_request_id: bool = True,
        testing: bool = False,
    ) -> None:
        self.wsgi_app = wsgi_app
        self.rec = rec
        self.redactor = redactor
        self.job_ids = job_ids
        self._resolve = job_ids.resolve  # bound once, not per request
        self.exclude = exclude
        self._exact, self._under = excluded(exclude)
        self.server_timing = server_timing
        self.slow_ms = slow_ms
        self.trust_request_id = trust_request_id
        self.testing = testing
        self._testing_text = "true" if testing else "false"

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        # The hot path of every request: kept to plain attribute and dict operations.
        path = environ.get("PATH_INFO", "")
        if not path.isascii() or path[:1] != "/" or path[:2] == "//":
            path = _path(path)  # first: //_diaglog is Flask's /_diaglog, so excluded too
        if self._under and (path in self._exact or path.startswith(self._under)):
            return self.wsgi_app(environ, start_response)
        if "=" in path or "%" in path:  # Redactor.path's own first test, without the call
            path = self.redactor.path(path)  # /reset/token=X: the path is written, so redacted
        if self.trust_request_id:
            rid = environ.get("HTTP_X_REQUEST_ID")
            if rid is None or not is_valid_id(rid):
                tp = environ.get("HTTP_TRACEPARENT")
                rid = (traceparent_id(tp) if tp else None) or new_request_id()
        else:
            rid = new_request_id()
        method = environ.get("REQUEST_METHOD")
        trace = _new_trace(Trace)
        _init_trace(trace, self.rec, "request", rid, None, method, path, environ)
        job_ids = self.job_ids
        qs = environ.get("QUERY_STRING")
        if (
            "HTTP_X_JOB_ID" in environ
            or "HTTP_IDEMPOTENCY_KEY" in environ
            or (qs and "job_id" in qs)
        ):
            job_ids.at_start(trace, environ)
        # The start line, before Flask matches the URL or anything reads the body: the request
        # is in flight from here. (Inlined here rather than a method: one call less per request.)
        ctype = environ.get("CONTENT_TYPE")
        mimetype = ctype.partition(";")[0].strip().lower() or None if ctype else None
        client = environ.get("REMOTE_ADDR")
        query = self.redactor.query(qs) if qs else None
        self.rec.record(
            "request_start",
            trace,
            _INFO,
            request_start_msg(
                method, f"{path}?{query}" if qs else path, client, mimetype, self._testing_text
            ),
            (method, path, query, client, mimetype, self.testing),
            None,
            None,
            trace.start,  # the start line's time is the trace's
        )
        trace.resolve = self._resolve  # the URL, once matched, or the body may say more

        # The closure captures only trace, self and start_response: each captured name is a
        # cell made per request.

        def _start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            trace.status = code = int(status[:3])
            if trace.resolve is not None:
                # Flask calls this inside the request context, after the view: the URL's job id
                # and rule, or a body the view read, are known now.
                self.job_ids.resolve(trace, False, True)
            sized = own_rid = own_timing = False
            for name, _ in headers:
                # Flask's own spelling first: two string compares instead of a lower() call per
                # header (measured: 2.8 k instructions less per request).
                if name == "Content-Length":
                    sized = True
                elif name != "Content-Type" and 12 <= len(name) <= 14:
                    low = name.lower()
                    if low == "content-length":
                        sized = True
                    elif low == "x-request-id":
                        own_rid = True
                    elif low == "server-timing":
                        own_timing = True
            # A streamed body (a generator, stream_with_context) has its end line when the server
            # closes it. Flask's response said whether it streams (hooks.py), or else a body of
            # unknown length is streamed: Flask gives every buffered body a Content-Length.
            trace.streamed = (
                (not sized or trace.streamed)
                and code >= 200
                and code not in (204, 304)
                and trace.method != "HEAD"
            )
            if not own_rid:  # the app's own X-Request-ID wins: exactly one goes out
                headers.append(("X-Request-ID", trace.request_id))  # type: ignore[arg-type]
            if self.server_timing:
                timing = f"total;dur={format_float((perf_counter() - trace.t0) * 1000.0, '.2f')}"
                stages = trace.stages
                if stages is not None:  # the stages' entries first: made by the stages
                    head = stages[2]
                    timing = (head if head is not None else stage_entries(stages[0])) + timing
                if not own_timing:
                    headers.append(("Server-Timing", timing))
                else:  # merged into the app's header: one Server-Timing, the app's entries first
                    i = next(i for i, h in enumerate(headers) if h[0].lower() == "server-timing")
                    name, value = headers[i]
                    headers[i] = (name, f"{value}, {timing}" if value else timing)
            return start_response(status, headers, exc_info)

        app = self.wsgi_app  # an attribute, then a call: no method lookup
        token = set_trace(trace)
        try:
            body = app(environ, _start_response)
        except BaseException as exc:
            # Propagated (TESTING or PROPAGATE_EXCEPTIONS): the end line still gets written.
            self.finish(trace, exc)
            raise
        finally:
            reset_trace(token)
        if trace.streamed or trace.status is None or type(body) not in BUFFERED:
            # Streamed or not started yet: the end line when the server closes the body. A file
            # (send_file) stays in the server's own wrapper, which the server may send with
            # sendfile; only the file inside is wrapped.
            if type(body) is environ.get("wsgi.file_wrapper"):
                rewrapped = _file_body(body, trace, self)
                if rewrapped is not None:
                    return rewrapped
            return _StreamedBody(body, trace, self)
        self.finish(trace, None)
        return body

    def finish(self, trace: Trace, exc: BaseException | None, aborted: bool = False) -> None:
        """Record the end line (and the error line if not recorded yet); free the job."""
        ms = (perf_counter() - trace.t0) * 1000.0
        try:
            if trace.resolve is not None:  # the URL's job id and rule, or a body the view read
                self.job_ids.resolve(trace, False, True)
            self.rec.close(trace)  # out of the registry before hung is read: see Recorder.close
            status = trace.status
            if exc is not None:
                if trace.error is not exc:
                    self.error(trace, exc)
                status = 500
            elif status is None and trace.error is not None:
                status = 500
            slow = self.slow_ms
            is_slow = ms >= slow if slow else False  # no bool() call: 0.15 k instructions
            method, path, route = trace.method, trace.path, trace.route
            stages = trace.stages
            if aborted or trace.hung or is_slow or trace.bad_job_id is not None:
                hung, bad = trace.hung, trace.bad_job_id
                if bad is not None:  # the client's text, as the query it came from: redacted
                    bad = self.redactor.text(bad)
                totals, word = trace.totals_and_word()
                msg = request_end_msg(
                    method, path, status, ms, route, totals, aborted, hung, is_slow, bad, word
                )
                fields: tuple[Any, ...] = (
                    method, path, route, status, ms, totals,
                    aborted or None, hung or None, is_slow or None, bad,
                )  # fmt: skip
            elif stages is not None:  # stages and no other word: the stages word is the tail
                totals, word, _ = stages  # made by the stages (see Trace.stages)
                if word is not None:
                    msg = request_end_msg(method, path, status, ms, route) + word
                else:  # a name ran twice: the word is made from the totals
                    msg = request_end_msg(method, path, status, ms, route, totals)
                fields = (method, path, route, status, ms, totals)
            else:  # the common case
                msg = request_end_msg(method, path, status, ms, route)
                fields = (method, path, route, status, ms)
            # No status: cut off before it answered (the process stopped, see background.py).
            level = _WARNING if (status is None or status >= 500) or is_slow else _INFO
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
            size = req.content_length
            if req.is_json and size is not None and size <= BODY_SHOWN_MAX:
                # Only a body already in memory: reading one now could wait on a slow client.
                body = body_json(req, False)
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
        aborted = not self._exhausted and self._error is None
        _close_and_end(self._owner, self._trace, self._body, self._error, aborted)


def _close_and_end(
    owner: RequestTrail, trace: Trace, inner: Any, error: BaseException | None, aborted: bool
) -> None:
    """Close ``inner`` (a body, a file) inside the request's trace, then write the request's end
    line and free its job, whatever the close raised."""
    token = set_trace(trace)
    try:
        close = getattr(inner, "close", None)
        if close is not None:
            close()
    finally:
        reset_trace(token)
        owner.finish(trace, error, aborted=aborted)


def _file_body(body: Any, trace: Trace, owner: RequestTrail) -> Iterable[bytes] | None:
    """A new instance of the server's ``wsgi.file_wrapper`` class around the file of ``body``,
    wrapped in a :class:`_ClosingFile`; ``None`` for a wrapper this does not know.

    Known: the wrapper of PEP 3333's example, which keeps the file as ``filelike`` and the block
    size as ``blksize`` (gunicorn's and ``wsgiref``'s). The server sees its own class, so it
    takes its own path for files (gunicorn: ``os.sendfile`` when the file has a ``fileno``).
    """
    filelike = getattr(body, "filelike", None)
    blksize = getattr(body, "blksize", None)
    if filelike is None or type(blksize) is not int:
        return None
    try:
        wrapped: Iterable[bytes] = type(body)(_ClosingFile(filelike, trace, owner), blksize)
    except Exception:  # a wrapper of another shape: streamed as any other body
        return None
    return wrapped


class _ClosingFile:
    """The file inside a server's file wrapper: the file's own attributes (``fileno``, ``seek``,
    ``tell``, ``mode``, ...), except that ``close()`` closes the file, then writes the request's
    end line and frees its job.

    ``aborted``: when the server read the file (no sendfile), as for a streamed body, closed
    before the end of the file; when it did not (sendfile sends from the ``fileno``), closed
    while an exception was on its way out, as the server's ``finally`` does when the client has
    gone (its send failed).
    """

    __slots__ = ("_done", "_eof", "_error", "_file", "_owner", "_read", "_trace")

    def __init__(self, file: Any, trace: Trace, owner: RequestTrail) -> None:
        self._file = file
        self._trace = trace
        self._owner = owner
        self._read = False
        self._eof = False
        self._done = False
        self._error: BaseException | None = None

    def __getattr__(self, name: str) -> Any:
        if name in _ClosingFile.__slots__:  # not set (a copy made without __init__)
            raise AttributeError(name)
        return getattr(self._file, name)

    def read(self, *args: Any) -> Any:
        self._read = True
        token = set_trace(self._trace)
        try:
            data = self._file.read(*args)
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            reset_trace(token)
        if not data:
            self._eof = True
        return data

    def close(self) -> None:
        if self._done:
            return
        self._done = True
        failing = sys.exc_info()[1] is not None  # read before the close handles its own
        aborted = self._error is None and not self._eof and (self._read or failing)
        _close_and_end(self._owner, self._trace, self._file, self._error, aborted)
