"""Timed stages: ``with stage("name"):``, ``@stage("name")`` and ``@timed_stage``.

A stage records its duration on the current request or background job, emits a ``stage`` event
(one log line), and appears in the ``Server-Timing`` header. Nested stages are named with their
parents joined by dots: ``with stage("generate"): with stage("mesh"):`` records ``generate`` and
``generate.mesh``. A stage that raises is recorded with ``ok: false`` and ``error``, and the
exception propagates unchanged.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from time import perf_counter
from types import TracebackType
from typing import Any, TypeVar, overload

from .context import Trace, current_trace
from .escapes import stage_names
from .trail import format_float, stage_end

__all__ = ["get_request_timings", "stage", "stage_entries", "timed_stage"]

F = TypeVar("F", bound=Callable[..., Any])
_INFO = logging.INFO
_WARNING = logging.WARNING


class stage:
    """Time a block or a function as a named stage of the current request or job.

    Works as a context manager and as a decorator. Outside a request or background job the time
    is still measured but nothing is logged (unless inside a Flask app context of an app that uses
    DiagLog, where the line goes to ``jobs.log``).
    """

    __slots__ = ("_full", "_outer", "_t0", "_trace", "name")

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError("stage() needs a non-empty name")
        self.name = name  # _trace, _outer, _full and _t0 are set by __enter__

    def __enter__(self) -> stage:
        trace = current_trace()
        if trace is None:
            trace = _app_trace()
            if trace is None:  # timed, not recorded
                self._trace = None
                self._t0 = perf_counter()
                return self
        self._trace = trace
        # The enclosing stage is remembered here, not in a stack on the trace: no list to build
        # and pop per stage.
        self._outer = outer = trace.current_stage
        trace.current_stage = self._full = self.name if outer is None else f"{outer}.{self.name}"
        self._t0 = perf_counter()
        return self

    def __exit__(
        self,
        et: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        ms = (perf_counter() - self._t0) * 1000.0
        trace = self._trace
        if trace is None:
            return
        self._trace = None
        name = self._full
        if trace.current_stage is name:  # not if an inner stage was left open (a generator)
            trace.current_stage = self._outer
        # The run and the totals, to the microsecond, half up (``// 1.0`` is int()'s number for
        # these non-negative values without int()'s call: 0.45 k instructions less, callgrind);
        # the stage's line shows the run so rounded, so a stage run once has one number in its
        # line, its total and the end line's word, however the word is made. The totals are a
        # new dict each time, swapped in whole: a reader in another thread (the watchdog, the
        # in-flight list) sees the old totals or the new ones, never a dict changing under it.
        run = (ms * 1000.0 + 0.5) // 1.0 / 1000.0
        stages = trace.stages
        if stages is None:
            totals = {name: run}
            word: str | None = ""
            head: str | None = ""
        else:
            # The end line's stages word and the Server-Timing entries so far, kept while every
            # name is new (a repeated name is a sum: the end line and the header format it from
            # the totals).
            totals, word, head = stages
            if name in totals:
                word = head = None
            totals = totals.copy()
            totals[name] = ((totals.get(name, 0.0) + ms) * 1000.0 + 0.5) // 1.0 / 1000.0
        rec = trace.rec
        if rec is None:  # no line, no end line and no header: only the totals
            word = head = None
        else:
            # One number, formatted once, for the stage's line, the end line's word and the
            # header.
            text = format_float(run, ".2f")
            if et is None:
                msg, word, head = stage_end(name, text, True, None, word, head)
            else:
                error = rec.error_text(exc) if exc is not None else "error"
                msg, word, head = stage_end(name, text, False, error, word, head)
        # Published only if no other stage of this work (in another thread) ended since
        # ``stages`` was read, else added to what that one published. The test and the store
        # run no call and no allocation (the tuple is made first), so in CPython no other thread
        # runs between them.
        new = (totals, word, head)
        if trace.stages is stages:
            trace.stages = new
        else:
            _add_total(trace, name, ms)
        if rec is None:
            return
        if et is None:
            rec.record("stage", trace, _INFO, msg, (name, ms, True))
        else:
            rec.record("stage", trace, _WARNING, msg, (name, ms, False, error))

    def __call__(self, fn: F) -> F:
        return _decorate(fn, self.name)


def _add_total(trace: Trace, name: str, ms: float) -> None:
    """Add a stage's run to totals another thread's stage published while it ended: the end
    line's word and the header are then made from the totals (the text kept is for the old)."""
    while True:
        stages = trace.stages
        totals = dict(stages[0]) if stages is not None else {}
        totals[name] = ((totals.get(name, 0.0) + ms) * 1000.0 + 0.5) // 1.0 / 1000.0
        new = (totals, None, None)
        if trace.stages is stages:  # as in stage.__exit__
            trace.stages = new
            return


def _app_trace() -> Trace | None:
    """A throw-away trace for a stage run in an app context outside any request or job."""
    from flask import current_app, has_app_context

    if not has_app_context():
        return None
    state = current_app.extensions.get("diaglog")
    rec = getattr(state, "recorder", None)
    if rec is None:
        return None
    return Trace(rec, "job", None, None)


def _decorate(fn: F, name: str) -> F:
    """``fn`` run as the stage ``name``: a generator function's stage lasts while the generator
    runs (to its end or its close), not only while it is created."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator_wrapper(*args: Any, **kwargs: Any) -> Any:
            with stage(name):
                return (yield from fn(*args, **kwargs))

        return generator_wrapper  # type: ignore[return-value]

    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def async_generator_wrapper(*args: Any, **kwargs: Any) -> Any:
            with stage(name):
                async for item in fn(*args, **kwargs):
                    yield item

        return async_generator_wrapper  # type: ignore[return-value]

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            with stage(name):
                return await fn(*args, **kwargs)

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with stage(name):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@overload
def timed_stage(name_or_fn: F) -> F: ...
@overload
def timed_stage(name_or_fn: str | None = None) -> Callable[[F], F]: ...


def timed_stage(name_or_fn: str | Callable[..., Any] | None = None) -> Any:
    """Decorator form of :class:`stage`: ``@timed_stage("render")`` or bare ``@timed_stage``.

    Bare, the stage is named after the function.
    """
    if callable(name_or_fn):
        return _decorate(name_or_fn, name_or_fn.__name__)

    def decorator(fn: F) -> F:
        return _decorate(fn, name_or_fn or fn.__name__)

    return decorator


def stage_entries(totals: dict[str, float]) -> str:
    """The stages' entries of ``Server-Timing``, ``validate;dur=1.23, generate;dur=40.31, ``
    (names made into valid tokens; durations as the lines show them, to 0.01 ms), made from the
    totals. The stages keep this text as they end (:attr:`Trace.stages`); this makes it when
    they could not (a name run twice is a sum)."""
    head = ""
    for name, ms in totals.items():
        head += f"{stage_names(name)[1]};dur={format_float(ms, '.2f')}, "
    return head


def get_request_timings() -> dict[str, float]:
    """Stage name to milliseconds for the current request or job (empty outside one)."""
    trace = current_trace()
    return dict(trace.stage_totals()) if trace is not None else {}
