"""The one place that holds "where are we": a ContextVar with the current :class:`Trace`.

A trace is either a request (created by the WSGI wrapper) or a background job (created by
``DiagLog.spawn``/``DiagLog.wrap``). Ids are validated and generated here and nowhere else.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .record import Recorder

__all__ = [
    "Trace",
    "current_job_id",
    "current_request_id",
    "current_trace",
    "is_valid_id",
    "new_request_id",
]

#: Request and job ids: 1 to 128 characters of ``[A-Za-z0-9._:-]``.
ID_PATTERN = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_is_valid = ID_PATTERN.fullmatch
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


def as_id(value: Any) -> Any:
    """A whole number given as a job or request id (a JSON ``5``) as its text; else ``value``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def is_valid_id(value: object) -> bool:
    """True when ``value`` is a usable request or job id."""
    return isinstance(value, str) and _is_valid(value) is not None


def traceparent_id(header: str | None) -> str | None:
    """The trace id of a W3C ``traceparent`` header, or ``None``."""
    if not header:
        return None
    m = _TRACEPARENT.fullmatch(header.strip().lower())
    if m is None or m.group(1) == "0" * 32:
        return None
    return m.group(1)


_perf_counter = time.perf_counter
_time = time.time
_get_ident = threading.get_ident
_urandom = os.urandom


def new_request_id() -> str:
    """A new id: 72 bits from the operating system's CSPRNG, as 18 hex digits.

    Unpredictable, so a client cannot send the id the next request will get (its lines would
    then show up in another request's trace).
    """
    return _urandom(9).hex()


class Lease(Protocol):
    """What a trace holds while a guarded job is active (implemented in :mod:`.jobs`)."""

    def retain(self) -> None: ...

    def release(self) -> None: ...


class Trace:
    """The state of one request or one background job, and the recorder its lines go to.

    ``stages`` holds the finished stages' total milliseconds by name (with the text made of
    them), ``current_stage`` the innermost stage running (the one the watchdog reports).
    :mod:`flask_diaglog.timing` keeps both.
    """

    # The attributes every request sets or reads are slots, set in __init__: CPython 3.11 reads a
    # slot with a specialized instruction, while a class default read through an instance takes
    # the generic path (a type-attribute cache lookup whose hits depend on memory layout: up to
    # 1 k instructions a read when it misses). Those a request neither sets nor reads (progress)
    # are class defaults, stored in the instance's __dict__ only when set.
    __slots__ = (
        "__dict__",
        "__weakref__",
        "bad_job_id",
        "current_stage",
        "environ",
        "error",
        "hung",
        "job_id",
        "kind",
        "lease",
        "method",
        "path",
        "rec",
        "request_id",
        "resolve",
        "route",
        "stages",
        "start",
        "status",
        "streamed",
        "t0",
        "target",
        "thread",
    )

    #: The exception that ended it, once recorded.
    error: BaseException | None
    #: The lease of its guarded job, while held.
    lease: Lease | None
    #: How many hang reports were made.
    hung: int
    #: An invalid job id the request carried (escaped and cut short by the renderer).
    bad_job_id: str | None
    #: The latest ``progress()``: ``(fraction, message)``, and when its line was written.
    progress: tuple[float, str | None] | None = None
    progress_at: float | None = None

    def __init__(
        self,
        rec: Recorder | None,
        kind: str,
        request_id: str | None,
        job_id: str | None = None,
        method: str | None = None,
        path: str | None = None,
        environ: dict[str, Any] | None = None,
    ) -> None:
        #: The recorder of the app this work belongs to (``None``: diaglog is not active).
        self.rec = rec
        self.kind = kind  # "request" or "job"
        #: The file its lines go to: "requests" or "jobs".
        self.target = "jobs" if kind == "job" else "requests"
        self.request_id = request_id
        self.job_id = job_id
        self.method = method
        self.path = path
        self.t0 = _perf_counter()
        self.start = _time()
        #: The URL rule Flask matched (requests), or ``None``.
        self.route: str | None = None
        #: The innermost stage running (its full, dotted name), or ``None``. A plain attribute:
        #: another thread (the watchdog) reads one whole string.
        self.current_stage: str | None = None
        #: ``None`` before the first stage ends, then ``(totals, word, head)``: stage name to
        #: total milliseconds, the end line's ``stages=`` word and the ``Server-Timing`` entries
        #: the stages made of them (``None``: to be made from the totals, as when a name ran
        #: twice). One tuple, replaced whole on each change and never changed in place: a reader
        #: in another thread (the watchdog, the in-flight list, a stage of the same work) sees
        #: the three of one moment, with one attribute read. Read it; a stage stores it only if
        #: it is still what the stage read (see ``timing.stage.__exit__``).
        self.stages: tuple[dict[str, float], str | None, str | None] | None = None
        self.status: int | None = None
        self.streamed = False
        self.thread = _get_ident()
        #: Pending job-id resolution (see :class:`flask_diaglog.jobids.JobIds`): called as
        #: ``resolve(trace, read_body)`` until the job id is known, then ``None``.
        self.resolve: Callable[[Trace, bool], None] | None = None
        #: The WSGI environ of a request (how another thread finds Flask's request object).
        self.environ = environ
        self.error = self.lease = self.bad_job_id = None
        self.hung = 0

    def elapsed_ms(self) -> float:
        return (_perf_counter() - self.t0) * 1000.0

    def stage_totals(self) -> dict[str, float]:
        """Stage name to total milliseconds (a stage run several times is summed).

        The same dict as in :attr:`stages` (empty before the first stage): treat it as read-only.
        """
        stages = self.stages
        return stages[0] if stages is not None else {}

    def totals_and_word(self) -> tuple[dict[str, float] | None, str | None]:
        """The stage totals and the end line's ``stages=`` word the stages built, of one moment
        (the word ``None``: make it from the totals); ``(None, None)`` before the first stage."""
        stages = self.stages
        return (stages[0], stages[1]) if stages is not None else (None, None)

    def __repr__(self) -> str:
        return f"<Trace {self.kind} req={self.request_id} job={self.job_id}>"


_current: ContextVar[Trace | None] = ContextVar("flask_diaglog_trace", default=None)

#: The current trace, or ``None`` outside a request or background job.
current_trace: Callable[[], Trace | None] = _current.get


def current_request_id() -> str | None:
    """The id of the current request, also inside stages and background work; else ``None``."""
    t = _current.get()
    return t.request_id if t is not None else None


def current_job_id() -> str | None:
    """The job id of the current request or background job, or ``None``.

    A job id in a JSON or form body is looked up on this call if it is not known yet (the body is
    read and put back, so the view still gets it; see :doc:`/lines`).
    """
    t = _current.get()
    if t is None:
        return None
    resolve = t.resolve
    if resolve is not None:
        resolve(t, True)
    return t.job_id


def settled_trace() -> Trace | None:
    """The current trace with its job id resolved (a body may be read for it): what background
    work started now inherits."""
    t = _current.get()
    if t is not None:
        resolve = t.resolve
        if resolve is not None:
            resolve(t, True)
    return t


#: Make ``trace`` current; returns the token for :func:`reset_trace` (the ContextVar's own
#: bound methods: no extra call layer on the request path).
set_trace: Callable[[Trace | None], Any] = _current.set
#: Restore the trace that was current before the matching :func:`set_trace`.
reset_trace: Callable[[Any], None] = _current.reset


@contextmanager
def trace_current(trace: Trace | None) -> Iterator[None]:
    """``trace`` is the current trace meanwhile (``None``: the current one stays): lines written
    outside a run, such as a lease freed after its ``job_end``, carry its ids."""
    if trace is None:
        yield
        return
    token = set_trace(trace)
    try:
        yield
    finally:
        reset_trace(token)
