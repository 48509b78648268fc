"""Where a request's job id comes from: the one lookup, strict for the guard, lenient for lines.

A job id may come from (in this order) the URL view argument ``job_id``, the ``X-Job-ID`` header,
the ``Idempotency-Key`` header, the JSON body field or the form field ``job_id``, or the query
parameter ``job_id`` (or from ``DiagLog(job_id=...)``, which replaces all of these).

* :func:`lookup_job_id` is the strict lookup of ``@guard_job``: an invalid id is a 400
  (:class:`~flask_diaglog.problems.InvalidJobId`); :func:`settle` makes its id the trace's.
* :class:`JobIds` is the lenient resolution of the request trail. An observer must not change a
  response, so an invalid id is never an error there: it is kept, escaped and cut short, as
  ``bad_job_id`` on the end line, and the lines carry no job id. It also never takes the body
  from the view and never delays the start line: headers and the query string are read when the
  request arrives, the URL once Flask has matched it, and the body only when someone asks for the
  job id (``current_job_id()``, ``spawn``, the guard) or when the view has read the body itself.
* :func:`peek_body` reads a body for the lookup and puts the same bytes back, so
  ``request.stream``, ``get_data()``, ``get_json()``, ``form`` and ``files`` give the view what
  they give without diaglog.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from flask.globals import _cv_request
from flask.wrappers import Request

from .context import as_id, is_valid_id
from .problems import InvalidJobId

if TYPE_CHECKING:
    from .context import Trace

__all__ = [
    "BODY_LOOKUP_MAX",
    "JobIdGetter",
    "JobIds",
    "lookup_job_id",
    "peek_body",
    "unread_body",
    "url_job_id",
]

JobIdGetter = Callable[["Request"], "str | None"]

#: Bodies larger than this are never read for a ``job_id`` field or shown in error lines.
BODY_LOOKUP_MAX = 1024 * 1024
#: How much of an invalid id the ``bad_job_id`` field keeps.
BAD_ID_MAX = 64
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
#: The current request context, or ``None``: Flask's ContextVar's ``get``, bound once (a method
#: looked up on a ContextVar per call is not specialized by CPython 3.11).
_request_ctx = _cv_request.get


class _Peeked(io.BytesIO):
    """The body put back after :func:`peek_body` read it; ``data`` is what was read."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.data = data


class _Failed(io.RawIOBase):
    """The body put back after :func:`peek_body` failed to read it: reading it again raises what
    the first read raised (a client that disconnected mid-body), as it would without diaglog."""

    def __init__(self, exc: Exception) -> None:
        super().__init__()
        self.exc = exc

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise self.exc


def peek_body(req: Request, read: bool) -> bytes | None:
    """The raw body of ``req`` for the job-id lookup, or ``None``.

    With ``read`` false, only a body that is already in memory (the view called ``get_data()``
    or ``get_json()``, or an earlier peek) is returned. With ``read`` true, a body of a known
    length up to :data:`BODY_LOOKUP_MAX` that nobody has started to read is read, and the same
    bytes are put back as ``request.stream`` and ``wsgi.input``. A chunked body, a body the view
    has started reading, or one that fails to arrive is left alone (``None``).
    """
    cached = getattr(req, "_cached_data", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    d = req.__dict__
    stream = d.get("stream")
    if isinstance(stream, _Peeked):
        return stream.data
    if not read or stream is not None or "form" in d:
        return None
    env = req.environ
    try:
        length = int(env.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    if length <= 0 or length > BODY_LOOKUP_MAX:
        return None
    try:
        data = req.stream.read()  # to the declared length; raises if the client disconnects
    except Exception as exc:  # a client that disconnects: the view's read fails the same way
        d["stream"] = env["wsgi.input"] = _Failed(exc)
        return None
    d["stream"] = _Peeked(data)
    env["wsgi.input"] = io.BytesIO(data)
    return data


def _mimetype(env: dict[str, Any]) -> str:
    ctype = env.get("CONTENT_TYPE")
    return ctype.partition(";")[0].strip().lower() if ctype else ""


def _is_json(mimetype: str) -> bool:
    """As werkzeug's ``is_json``: ``application/json`` or ``application/*+json``."""
    return mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    )


def body_json(req: Request, read: bool) -> Any:
    """The JSON body of ``req`` (see :func:`peek_body` for ``read``), or ``None``. Never raises:
    a broken, deeply nested or undecodable body is ``None``."""
    cached = req._cached_json  # what the view's own get_json() found, if it ran
    if cached[0] is not Ellipsis:
        return cached[0]
    data = peek_body(req, read)
    if not data:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def _body_value(req: Request, read: bool) -> tuple[Any, str]:
    """A ``job_id`` field of the JSON or form body, and where it came from."""
    env = req.environ
    mimetype = _mimetype(env)
    if mimetype == "application/json" or (
        mimetype.startswith("application/") and "+json" in mimetype
    ):
        body = body_json(req, read)
        if isinstance(body, dict) and "job_id" in body:
            return body["job_id"], "the JSON body (job_id)"
    elif mimetype in _FORM_TYPES:
        if "form" in req.__dict__:
            v = req.form.get("job_id")
        else:
            data = peek_body(req, read)
            if data is None:
                return None, ""
            try:
                _, form, files = req.make_form_data_parser().parse(
                    io.BytesIO(data), mimetype, len(data), dict(req.mimetype_params)
                )
            except Exception:  # a broken multipart body: the view will find out for itself
                return None, ""
            for upload in files.values():
                upload.close()  # our parse's copies; the view parses its own
            v = form.get("job_id")
        if v is not None:
            return v, "the form field job_id"
    return None, ""


def unread_body(req: Request) -> tuple[int, str] | None:
    """Why a JSON or form body that may hold a job id could not be looked at, as ``(status,
    reason)`` for :class:`~flask_diaglog.problems.JobIdUnreadable`; ``None`` when it was looked
    at or there is no such body. Call it after :func:`lookup_job_id` found no id."""
    env = req.environ
    mimetype = _mimetype(env)
    json_body = _is_json(mimetype)
    if not json_body and mimetype not in _FORM_TYPES:
        return None
    length = env.get("CONTENT_LENGTH")
    if not length:
        chunked = "chunked" in env.get("HTTP_TRANSFER_ENCODING", "").lower()
        if chunked or env.get("wsgi.input_terminated"):
            return 411, "has no Content-Length (a streamed body is not read for a job id)"
        return None
    try:
        size = int(length)
    except ValueError:
        return None
    if size > BODY_LOOKUP_MAX:
        return 413, f"is larger than {BODY_LOOKUP_MAX} bytes (not read for a job id)"
    data = peek_body(req, False)
    if size == 0 or data is None:
        return None  # read by the view already, or not at all: nothing more to tell
    if json_body:
        try:
            json.loads(data)
        except (ValueError, RecursionError):
            return 400, "is not valid JSON, so its job_id field cannot be read"
    return None


def _may_have_body_id(env: dict[str, Any]) -> bool:
    length = env.get("CONTENT_LENGTH")
    if not length or length == "0":
        return False
    mimetype = _mimetype(env)
    return mimetype in _FORM_TYPES or _is_json(mimetype)


def _query_value(qs: str) -> Any:
    if "job_id" not in qs:
        return None
    for k, v in parse_qsl(qs, keep_blank_values=True):
        if k == "job_id":
            return v
    return None


def _idempotency_key(value: str) -> str:
    """The string of an ``Idempotency-Key`` structured-field string (quotes optional)."""
    v = value.strip()
    if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        return v[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return v


def _invalid(value: Any, source: str) -> InvalidJobId:
    return InvalidJobId(
        f"The job id from {source} is not valid: it must be 1 to 128 characters of "
        f"A-Z a-z 0-9 . _ : - (got {_shown(value)!r}).",
        source=source,
    )


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:BAD_ID_MAX]


def lookup_job_id(req: Request, getter: JobIdGetter | None) -> str | None:
    """The job id of a request, from the documented sources in order; 400 when invalid.

    The strict lookup of ``@guard_job`` (and of every route with ``DIAGLOG_STRICT_IDS``). It reads
    a JSON or form body through :func:`peek_body`, so the view still gets the body.
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
            if _may_have_body_id(env):
                value, source = _body_value(req, True)
            if not source:
                v = _query_value(env.get("QUERY_STRING", ""))
                if v is not None:
                    value, source = v, "the query parameter job_id"
    if value is None:
        return None
    value = as_id(value)
    if not is_valid_id(value):
        raise _invalid(value, source)
    return value  # type: ignore[no-any-return]


def settle(trace: Trace, req: Request) -> None:
    """End the lenient resolution of ``trace``'s job id: a strict lookup (``@guard_job``,
    ``DIAGLOG_STRICT_IDS``) sets it instead. The URL rule is noted as resolution notes it, so the
    end line still names the route."""
    rule = req.url_rule
    if rule is not None and trace.route is None:
        trace.route = rule.rule
    trace.resolve = None
    trace.bad_job_id = None


def url_job_id(trace: Trace) -> str | None:
    """The URL's job id of a request in flight, read from another thread (the watchdog, the
    in-flight list) before the request's own thread has taken it: Flask's request, found through
    ``environ["werkzeug.request"]``, has its view arguments once the URL is matched."""
    if trace.job_id is not None or trace.resolve is None or trace.environ is None:
        return trace.job_id
    req = trace.environ.get("werkzeug.request")
    va = getattr(req, "view_args", None)
    if va and "job_id" in va:
        value = as_id(va["job_id"])
        if is_valid_id(value):
            return value  # type: ignore[no-any-return]
    return None


class JobIds:
    """The lenient job-id resolution of one app's request trail (see the module docstring).

    :meth:`at_start` runs in the WSGI wrapper, before Flask has the request: it takes an id from
    the headers, or from the query string when no body could hold one. :meth:`resolve` takes the
    URL's job id (and rule) once Flask has matched it, and a body's when asked: the recorder calls
    ``trace.resolve(trace, False)`` before each line, ``current_job_id()`` calls
    ``trace.resolve(trace, True)`` (which may read the body), and the end of the view and the end
    line ``resolve(trace, False, True)``, which settles it.
    """

    def __init__(
        self,
        getter: JobIdGetter | None,
        on_error: Callable[[str, BaseException, str], None] | None = None,
    ) -> None:
        self.getter = getter
        #: ``on_error("job_id", exc, what)``: the getter raised (counted and reported once).
        self.on_error = on_error

    def at_start(self, trace: Trace, env: dict[str, Any]) -> None:
        """Take the id the headers give, or the query string of a request without a body that
        could hold one (the URL and the body come later, through :meth:`resolve`)."""
        if self.getter is not None:
            return
        v = env.get("HTTP_X_JOB_ID")
        if v is None:
            v = env.get("HTTP_IDEMPOTENCY_KEY")
            if v is not None:
                v = _idempotency_key(v)
            else:
                qs = env.get("QUERY_STRING")
                if qs and "job_id" in qs and not _may_have_body_id(env):
                    v = _query_value(qs)
        if v is not None:
            if is_valid_id(v):
                trace.job_id = v
            else:
                trace.bad_job_id = _shown(v)

    def resolve(self, trace: Trace, read_body: bool, at_end: bool = False) -> None:
        """Take what can be known now: the URL's rule and job id once Flask matched it, the body
        when asked (``read_body``) or once the view has read it.

        ``at_end`` (the end of the view, or the end line): settle it. What is still unknown is
        taken from the query string, also when the body was never read (it is not read now: the
        view chose not to) or when Flask did not serve the request (another WSGI app did).
        """
        ctx = _request_ctx(None)
        req: Request | None
        if ctx is not None:
            req = ctx.request
        else:  # after the request (the end line) or from another thread (a hang report)
            env = trace.environ
            req = env.get("werkzeug.request") if env is not None else None
            if not isinstance(req, Request):
                # Before Flask made the request (a WSGI middleware's line), or never: another WSGI
                # app answered (it may have left a plain Werkzeug request in the environ).
                if at_end:
                    self._from_query(trace, env or {})
                return
        rule = req.url_rule
        if rule is None:
            if req.routing_exception is None:  # not matched yet (a line from the session
                if at_end:  # interface), or never (another WSGI app answered)
                    self._from_query(trace, req.environ)
                return
        elif trace.route is None:
            trace.route = rule.rule
        getter = self.getter
        if getter is not None:
            trace.resolve = None
            try:
                value = getter(req)
            except Exception as exc:  # the app's callable: not the observer's to raise, but said
                if self.on_error is not None:
                    self.on_error("job_id", exc, "the DiagLog(job_id=...) callable")
                return
            self._take(trace, value, override=True)
            return
        va = req.view_args
        if va and "job_id" in va:
            trace.resolve = None
            self._take(trace, va["job_id"], override=True)
            return
        env = req.environ
        length = env.get("CONTENT_LENGTH")  # no body (the common case): nothing more to learn
        if (
            not length
            or length == "0"
            or trace.job_id is not None
            or trace.bad_job_id is not None
            or "HTTP_X_JOB_ID" in env
            or "HTTP_IDEMPOTENCY_KEY" in env
            or not _may_have_body_id(env)
        ):
            trace.resolve = None  # the query string was read when the request arrived
            return
        value, source = _body_value(req, read_body)
        if source:
            trace.resolve = None
            self._take(trace, value, override=True)
        elif at_end or read_body or peek_body(req, False) is not None or "form" in req.__dict__:
            # The body was read and holds no id, or the view chose not to read it: the query
            # string may hold one.
            self._from_query(trace, env)

    def _from_query(self, trace: Trace, env: dict[str, Any]) -> None:
        """Settle the job id: the query string's, unless one is known already."""
        trace.resolve = None
        self._take(trace, _query_value(env.get("QUERY_STRING", "")), override=False)

    @staticmethod
    def _take(trace: Trace, value: Any, *, override: bool) -> None:
        if value is None:
            return
        value = as_id(value)
        if is_valid_id(value):
            trace.job_id = value
            if override:
                trace.bad_job_id = None
        elif override or trace.job_id is None:
            trace.bad_job_id = _shown(value)
            if override:
                trace.job_id = None
