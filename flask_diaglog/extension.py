"""The ``DiagLog`` extension: setup, the request hooks, background work.

How a request is observed (cheapest hooks that still see everything):

* ``app.wsgi_app`` is wrapped. The wrapper creates the :class:`~.context.Trace` (request id, start
  time), adds ``X-Request-ID`` and ``Server-Timing`` to the WSGI headers, and writes the end line
  when Flask returns, or, for a streamed body, when the server closes the body.
* One ``before_request`` function, run before any other, resolves the job id (after URL matching,
  so a ``<job_id>`` view argument is seen) and writes the start line before the view runs.
* One ``after_request`` function, run after all others, notes the final status and whether the
  body is streamed.
* Flask's ``got_request_exception`` signal gives the unhandled exception for the error line.

Request and stage lines take the *direct path* (:meth:`_State.write_direct`) while only the files,
the in-flight registry and signals without receivers would see their event: the line is rendered
by the same ``plain_line`` and written, the registry updated, and no ``Event`` is built. Anything
that listens (a receiver, the console, the live bridge, JSON files) gets events as before.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import os
import threading
import traceback
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from time import perf_counter, time
from typing import TYPE_CHECKING, Any, TypeVar

from flask import Flask, current_app, got_request_exception, has_app_context, request
from flask.wrappers import Request, Response
from werkzeug.wsgi import ClosingIterator

from .config import ConfigError, Settings, load_settings
from .context import (
    Trace,
    current_trace,
    is_valid_id,
    new_request_id,
    reset_trace,
    set_trace,
    traceparent_id,
)
from .events import Dispatcher, Event
from .logfiles import ConsoleSink, DiagLogHandler, FileSink, plain_line, render_plain
from .problems import InvalidJobId
from .redact import Redactor
from .signals import SignalSink, request_finished, request_started
from .timing import server_timing_header

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["DiagLog", "get_state"]

R = TypeVar("R")
JobIdGetter = Callable[[Request], "str | None"]

_REQ_LOGGER = "flask_diaglog.request"
_JOB_LOGGER = "flask_diaglog.job"
#: Bodies larger than this are not parsed just to look for a ``job_id`` field.
BODY_LOOKUP_MAX = 1024 * 1024
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


@dataclass(eq=False)
class _State:
    """Per-app state, stored in ``app.extensions["diaglog"]``."""

    ext: DiagLog
    app: Flask
    settings: Settings
    active: bool
    dispatch: Dispatcher = field(default_factory=Dispatcher)
    redactor: Redactor = field(default_factory=lambda: Redactor(()))
    files: FileSink | None = None
    console: ConsoleSink | None = None
    handler: DiagLogHandler | None = None
    loggers: list[logging.Logger] = field(default_factory=list)
    wsgi_app: Any = None
    #: Filled in by the job guard, the in-flight registry and the live bridge.
    extras: dict[str, Any] = field(default_factory=dict)
    #: The files are plain text: lines may be written without an event (see write_direct).
    direct: bool = False

    # -- the direct path ----------------------------------------------------------------------

    def write_direct(self, signal: Any, trace: Trace, level: int, logger: str, msg: str) -> bool:
        """Write the line of an event of ``trace`` without building the event, when only the
        files, the in-flight registry and a signal without receivers would see it (measured:
        the event, its dispatch and the three sinks cost about 3 µs per line, a fifth of the
        request overhead). Returns ``False`` when an event is needed: the caller emits it.

        The line is the same :func:`~.logfiles.plain_line` the file sink renders from the event;
        the caller updates the registry itself.
        """
        if not self.direct or signal.receivers or not self.dispatch.quiet:
            return False
        files = self.files
        if level >= files.level:  # type: ignore[union-attr]
            try:
                files.write(  # type: ignore[union-attr]
                    "jobs" if trace.kind == "job" else "requests",
                    level,
                    plain_line(time(), level, logger, trace.request_id, trace.job_id, msg),
                )
            except Exception as exc:  # never into the request: counted like a failing sink
                self.dispatch.failed(files, exc)
        return True

    # -- emitting ---------------------------------------------------------------------------

    def emit(
        self,
        kind: str,
        level: int,
        msg: str,
        trace: Trace | None,
        fields: dict[str, Any],
        *,
        exc: str | None = None,
        logger: str | None = None,
    ) -> Event:
        """Build one event for ``trace`` and dispatch it. The single way hooks create events."""
        if trace is not None:
            is_job = trace.kind == "job"
            ev = Event(
                kind,
                level,
                logger or (_JOB_LOGGER if is_job else _REQ_LOGGER),
                msg,
                trace.request_id,
                trace.job_id,
                fields,
                exc=exc,
                trace=trace,
                target="jobs" if is_job else "requests",
            )
        else:
            ev = Event(kind, level, logger or _REQ_LOGGER, msg, None, None, fields, exc=exc)
        self.dispatch(ev)
        return ev

    def format_exc(self, exc: BaseException) -> str:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
        return self.redactor.text(text)

    def report_internal(self, msg: str, exc: BaseException | None = None) -> None:
        """An ERROR line about diaglog itself (a failing sink, a store outage)."""
        ev = Event(
            "log",
            logging.ERROR,
            "flask_diaglog",
            msg,
            None,
            None,
            {},
            exc=self.format_exc(exc) if exc is not None else None,
        )
        files = self.files
        if files is not None:
            files(ev)

    def stats(self) -> dict[str, Any]:
        """Counters: failed file writes, dropped console lines, sink failures."""
        return {
            "failed_writes": self.files.failed_writes if self.files else 0,
            "console_dropped": self.console.dropped if self.console else 0,
            "sink_failures": dict(self.dispatch.failures),
        }

    # -- request lifecycle ------------------------------------------------------------------

    def finish_request(
        self, trace: Trace, exc: BaseException | None, aborted: bool = False
    ) -> None:
        """Write the end line (and the error line if not written yet); free the job."""
        try:
            if exc is not None and trace.error is not exc:
                self.request_error(trace, exc)
            status = trace.status
            if exc is not None or status is None:
                status = 500 if exc is not None or trace.error is not None else status
            ms = (perf_counter() - trace.t0) * 1000.0
            slow = self.settings.slow_ms
            is_slow = slow and ms >= slow
            level = logging.INFO
            if (status is not None and status >= 500) or is_slow:
                level = logging.WARNING
            msg = f"request_end {trace.method} {trace.path} {status} {ms:.2f}ms"
            if trace.stages or aborted or trace.hung or is_slow:
                totals = trace.stage_totals() if trace.stages else None
                if totals:
                    msg += " stages=" + ",".join([f"{k}:{v:.2f}" for k, v in totals.items()])
                if aborted:
                    msg += " aborted"
                if trace.hung:
                    msg += f" was_hung({trace.hung})"
                if is_slow:
                    msg += " slow"
            else:
                totals = None
            if self.write_direct(request_finished, trace, level, _REQ_LOGGER, msg):
                self.extras["inflight"].discard(trace)
                return
            fields: dict[str, Any] = {
                "method": trace.method,
                "path": trace.path,
                "status": status,
                "duration_ms": round(ms, 3),
                "stages": totals,
            }
            if aborted:
                fields["aborted"] = True
            if trace.hung:
                fields["hung"] = trace.hung
            self.emit("request_end", level, msg, trace, fields)
        finally:
            lease = trace.lease
            if lease is not None:
                trace.lease = None
                lease.release()

    def request_error(self, trace: Trace, exc: BaseException) -> None:
        trace.error = exc
        fields: dict[str, Any] = {
            "method": trace.method,
            "path": trace.path,
            "error": f"{type(exc).__name__}: {self.redactor.text(str(exc))}",
        }
        try:
            req = request._get_current_object()  # type: ignore[attr-defined]
        except RuntimeError:
            req = None
        if req is not None:
            fields["headers"] = self.redactor.headers(req.headers.items())
            if req.is_json and (req.content_length or 0) <= BODY_LOOKUP_MAX:
                body = req.get_json(silent=True)
                if body is not None:
                    fields["body"] = self.redactor.data(body)
        self.emit(
            "request_error",
            logging.ERROR,
            f"request_error {trace.method} {trace.path} {fields['error']}",
            trace,
            fields,
            exc=self.format_exc(exc),
        )


def get_state(app: Flask | None = None) -> _State:
    """The diaglog state of ``app`` (default: ``current_app``), with a helpful error if missing."""
    if app is None:
        if not has_app_context():
            raise RuntimeError(
                "flask-diaglog: working outside of an application context. Pass the app, or call "
                "this inside a request, a CLI command or 'with app.app_context():'."
            )
        app = current_app._get_current_object()  # type: ignore[attr-defined]
    state = app.extensions.get("diaglog")
    if state is None:
        raise RuntimeError(
            f"The app {app.name!r} is not registered with flask-diaglog. "
            "Did you forget to call DiagLog(app) or diaglog.init_app(app)?"
        )
    return state  # type: ignore[no-any-return]


class _Middleware:
    """The WSGI wrapper: trace, ids, response headers and the end line."""

    def __init__(self, wsgi_app: WSGIApplication, state: _State) -> None:
        self.wsgi_app = wsgi_app
        self.state = state
        # DIAGLOG_EXCLUDE plus prefixes the parts register (the dashboard's own URL).
        self.exclude = state.settings.exclude + tuple(state.extras.get("exclude", ()))
        self.server_timing = state.settings.server_timing

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        # The hot path of every request: kept to plain attribute and dict operations (see
        # the README's "Where the microseconds go" for the measured breakdown).
        path = environ.get("PATH_INFO", "")
        if self.exclude and path.startswith(self.exclude):
            return self.wsgi_app(environ, start_response)
        rid = environ.get("HTTP_X_REQUEST_ID")
        if rid is None or not is_valid_id(rid):
            tp = environ.get("HTTP_TRACEPARENT")
            rid = (traceparent_id(tp) if tp else None) or new_request_id()
        state = self.state
        trace = Trace(state, "request", rid, None, environ.get("REQUEST_METHOD"), path)
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
            state.finish_request(trace, exc)
            raise
        finally:
            reset_trace(token)
        if trace.streamed:
            return _StreamedBody(body, trace, state)
        state.finish_request(trace, None)
        return body


class _StreamedBody:
    """Wraps a streamed body: runs each chunk inside the request's trace, ends at ``close()``."""

    def __init__(self, body: Iterable[bytes], trace: Trace, state: _State) -> None:
        self._body = body
        self._it: Iterator[bytes] | None = None
        self._trace = trace
        self._state = state
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
            self._state.finish_request(self._trace, self._error, aborted=aborted)


class DiagLog:
    """Request diagnostics for a Flask app.

    ``DiagLog(app)`` or, with an app factory, ``diaglog = DiagLog()`` then
    ``diaglog.init_app(app)``. One instance may serve several apps; state is kept per app in
    ``app.extensions["diaglog"]``.

    :param socketio: a ``flask_socketio.SocketIO`` for live events (optional).
    :param live_auth: a callable ``(auth payload) -> bool`` that admits live clients (optional).
    :param job_id: a callable ``(request) -> str | None`` that replaces the built-in job id lookup.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        socketio: Any = None,
        job_id: JobIdGetter | None = None,
        live_auth: Callable[[Any], bool] | None = None,
    ) -> None:
        #: The Flask-SocketIO object live events go to, if any.
        self.socketio = socketio
        #: ``live_auth(auth) -> bool`` decides which live clients may connect (see live.py).
        self.live_auth = live_auth
        #: The job id lookup override, if any.
        self.job_id_getter = job_id
        if app is not None:
            self.init_app(app)

    def __repr__(self) -> str:
        if has_app_context() and "diaglog" in current_app.extensions:
            return f"<DiagLog {current_app.name}>"
        return "<DiagLog>"

    # -- setup ------------------------------------------------------------------------------

    def init_app(self, app: Flask) -> None:
        """Register on ``app``. Calling it again with the same instance does nothing; registering
        a second DiagLog instance on the same app raises ``RuntimeError``."""
        existing = app.extensions.get("diaglog")
        if existing is not None:
            if existing.ext is self:
                return
            raise RuntimeError(
                f"A different DiagLog instance is already registered on the app {app.name!r}; "
                "register one instance per app (calling init_app twice with the same instance "
                "is harmless)."
            )
        settings = load_settings(app)
        state = _State(ext=self, app=app, settings=settings, active=settings.enabled)
        app.extensions["diaglog"] = state
        if not settings.enabled:
            return
        state.redactor = Redactor(settings.redact)
        self._open_files(state)
        dispatch = state.dispatch
        dispatch.add(state.files, primary=True)  # type: ignore[arg-type]
        dispatch.on_first_failure = lambda name, exc: state.report_internal(
            f"flask-diaglog sink {name} failed; further failures are counted", exc
        )
        dispatch.add(SignalSink(app, dispatch.failed))
        self._setup_extras(state)
        if settings.console:
            state.console = ConsoleSink(state.files.render, level=settings.level)  # type: ignore[union-attr]
            dispatch.add(state.console)
        state.direct = state.files.render is render_plain  # type: ignore[union-attr]
        self._attach_logging(app, state)
        self._register_hooks(app, state)

    def _open_files(self, state: _State) -> None:
        s = state.settings
        try:
            os.makedirs(s.log_dir, exist_ok=True)
            if not os.access(s.log_dir, os.W_OK | os.X_OK):
                raise PermissionError(f"no write permission on {s.log_dir}")
            state.files = FileSink(
                s.log_dir,
                fmt=s.format,
                level=s.level,
                max_bytes=s.max_bytes,
                backup_count=s.backup_count,
                compress=s.compress,
                on_error=lambda f, e: _report_write_error(state, f, e),
            )
        except OSError as exc:
            raise ConfigError(
                f"DIAGLOG_LOG_DIR={s.log_dir!r} cannot be used for log files: "
                f"{exc.strerror or exc}. Create it or point DIAGLOG_LOG_DIR "
                "(config key or environment variable) to a writable directory."
            ) from exc

    def _setup_extras(self, state: _State) -> None:
        """The parts with their own modules; each registers its sink or hooks on ``state``."""
        from . import dashboard, jobs, live, watchdog

        watchdog.setup(state)
        jobs.setup(state)
        live.setup(state)
        dashboard.setup(state)

    def _attach_logging(self, app: Flask, state: _State) -> None:
        s = state.settings
        handler = _AppHandler(state)
        state.handler = handler
        names = list(s.loggers)
        if not names:
            names = [app.logger.name, app.import_name.split(".")[0]]
        # Attach to the minimal set: a logger whose ancestor is also captured would see each
        # record twice (the handler also skips records it has seen, as a second guard).
        resolved = sorted({"" if n in ("root", "") else n for n in names}, key=len)
        chosen: list[str] = []
        for name in resolved:
            if any(p == "" or name == p or name.startswith(p + ".") for p in chosen):
                continue
            chosen.append(name)
        for name in chosen:
            lg = logging.getLogger(name) if name else logging.getLogger()
            if name and lg.level == logging.NOTSET:
                lg.setLevel(s.level)  # so app.logger.info(...) is not filtered by root's WARNING
            for h in list(lg.handlers):
                if isinstance(h, _AppHandler) and h.state_ref() is None:
                    lg.removeHandler(h)  # left behind by an app that no longer exists
            lg.addHandler(handler)
            state.loggers.append(lg)

    def _register_hooks(self, app: Flask, state: _State) -> None:
        getter = self.job_id_getter

        testing = state.settings.testing
        testing_text = "true" if testing else "false"
        registry = state.extras["inflight"]

        def diaglog_before_request() -> None:
            trace = current_trace()
            if trace is None or trace.state is not state:
                return None
            req = request._get_current_object()  # type: ignore[attr-defined]
            trace.path = path = req.path
            invalid: InvalidJobId | None = None
            try:
                trace.job_id = _lookup_job_id(req, getter)
            except InvalidJobId as exc:
                invalid = exc  # the start line is still written, then the 400 is raised
            env = req.environ
            # The mimetype straight from the environ: req.mimetype parses the header options.
            ctype = env.get("CONTENT_TYPE")
            mimetype = ctype.partition(";")[0].strip().lower() or None if ctype else None
            client = env.get("REMOTE_ADDR")
            qs = env.get("QUERY_STRING")
            query = state.redactor.query(qs) if qs else None
            msg = (
                f"request_start {trace.method} {f'{path}?{query}' if qs else path} "
                f"client={client} type={mimetype or '-'} testing={testing_text}"
            )
            if state.write_direct(request_started, trace, logging.INFO, _REQ_LOGGER, msg):
                try:
                    registry.add(trace)
                except Exception as exc:  # as a failing sink would be: counted, never raised
                    state.dispatch.failed(registry, exc)
            else:
                fields: dict[str, Any] = {
                    "method": trace.method,
                    "path": path,
                    "client": client,
                    "content_type": mimetype,
                    "testing": testing,
                }
                if qs:
                    fields["query"] = query
                state.emit("request_start", logging.INFO, msg, trace, fields)
            if invalid is not None:
                raise invalid
            return None

        def diaglog_after_request(response: Response) -> Response:
            trace = current_trace()
            if trace is not None and trace.state is state:
                trace.status = response.status_code
                # HTTPException responses (404, 405, abort()) are pre-built bodies that Flask
                # wraps in a ClosingIterator: not streamed, so their end line is written now.
                trace.streamed = response.is_streamed and not isinstance(
                    response.response, ClosingIterator
                )
            return response

        def on_exception(sender: Flask, exception: BaseException, **_: Any) -> None:
            trace = current_trace()
            if trace is not None and trace.state is state and trace.error is not exception:
                state.request_error(trace, exception)

        app.before_request_funcs.setdefault(None, []).insert(0, diaglog_before_request)
        app.after_request_funcs.setdefault(None, []).insert(0, diaglog_after_request)
        # Weakly connected (blinker's global registry must not keep the app alive); the state
        # holds the receiver for as long as the app lives.
        got_request_exception.connect(on_exception, app)
        state.extras["exception_receiver"] = on_exception
        state.wsgi_app = app.wsgi_app
        app.wsgi_app = _Middleware(app.wsgi_app, state)  # type: ignore[method-assign]

    # -- background work --------------------------------------------------------------------

    def _state(self) -> _State | None:
        trace = current_trace()
        if trace is not None and trace.state is not None:
            return trace.state
        if has_app_context():
            st = current_app.extensions.get("diaglog")
            if st is not None and st.ext is self:
                return st  # type: ignore[no-any-return]
        return None

    def wrap(self, fn: Callable[..., R]) -> Callable[..., R]:
        """Return a callable that runs ``fn`` as background work of the current request.

        It carries the request and job ids (and a copy of all context variables), pushes an app
        context, and writes ``job_start``/``job_end`` lines to ``jobs.log``. Exceptions are logged
        with their traceback and re-raised (so an executor's future sees them). A job guarded by
        ``@guard_job`` stays active until the first call of the wrapped callable returns, or until
        the callable is garbage-collected without having run.
        """
        parent = current_trace()
        state = self._state()
        ctx = contextvars.copy_context()
        lease = parent.lease if parent is not None else None
        if lease is not None:
            lease.retain()
        held = [lease]
        name = getattr(fn, "__qualname__", None) or repr(fn)

        @functools.wraps(fn)
        def runner(*args: Any, **kwargs: Any) -> R:
            job_lease, held[0] = held[0], None
            return ctx.run(_run_job, state, parent, job_lease, name, fn, args, kwargs)

        if lease is not None:
            # Never run (a cancelled future, a dropped callable): free the job when it is gone.
            weakref.finalize(runner, _release_unused, held)
        return runner

    def spawn(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> threading.Thread:
        """Run ``fn(*args, **kwargs)`` in a new thread as background work of this request.

        See :meth:`wrap`. The thread is not a daemon, so a graceful shutdown waits for it. An
        exception in ``fn`` is written with its traceback to ``jobs.log`` and ``errors.log``.
        """
        runner = self.wrap(fn)
        state = self._state()
        logged = state is not None and state.active
        trace = current_trace()
        job_id = trace.job_id if trace is not None else None

        def target() -> None:
            try:
                runner(*args, **kwargs)
            except BaseException:
                if not logged:
                    raise  # no diaglog here: let threading.excepthook print it
                # else: already in jobs.log and errors.log with its traceback

        t = threading.Thread(target=target, name=f"diaglog-job-{job_id or new_request_id()}")
        t.start()
        return t

    # -- introspection ----------------------------------------------------------------------

    def stats(self, app: Flask | None = None) -> dict[str, Any]:
        """Counters for ``app`` (default: ``current_app``): failed writes, drops, sink failures."""
        return get_state(app).stats()


def _release_unused(held: list[Any]) -> None:
    lease, held[0] = held[0], None
    if lease is not None:
        lease.release()


def _run_job(
    state: _State | None,
    parent: Trace | None,
    lease: Any,
    name: str,
    fn: Callable[..., R],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> R:
    job = Trace(
        state,
        "job",
        parent.request_id if parent else None,
        parent.job_id if parent else None,
        parent.method if parent else None,
        parent.path if parent else None,
    )
    job.lease = lease
    token = set_trace(job)
    app_ctx = state.app.app_context() if state is not None else None
    if app_ctx is not None:
        app_ctx.push()
    try:
        if state is None or not state.active:
            return fn(*args, **kwargs)
        state.emit("job_start", logging.INFO, f"job_start {name}", job, {"name": name})
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            ms = job.elapsed_ms()
            error = f"{type(exc).__name__}: {state.redactor.text(str(exc))}"
            state.emit(
                "job_end",
                logging.ERROR,
                f"job_end {name} failed {ms:.2f}ms: {error}",
                job,
                {
                    "name": name,
                    "duration_ms": round(ms, 3),
                    "ok": False,
                    "error": error,
                    "stages": job.stage_totals() or None,
                    "hung": job.hung or None,
                },
                exc=state.format_exc(exc),
            )
            raise
        ms = job.elapsed_ms()
        totals = job.stage_totals()
        stages = " stages=" + ",".join(f"{k}:{v:.2f}" for k, v in totals.items()) if totals else ""
        hung = f" was_hung({job.hung})" if job.hung else ""
        state.emit(
            "job_end",
            logging.INFO,
            f"job_end {name} ok {ms:.2f}ms{stages}{hung}",
            job,
            {
                "name": name,
                "duration_ms": round(ms, 3),
                "ok": True,
                "stages": totals or None,
                "hung": job.hung or None,
            },
        )
        return result
    finally:
        try:
            if lease is not None:
                lease.release()
        finally:
            if app_ctx is not None:
                app_ctx.pop()
            reset_trace(token)


#: The most recently initialised app state: owns log records that belong to no app context.
_newest: weakref.ReferenceType[_State] | None = None


class _AppHandler(DiagLogHandler):
    """The handler diaglog attaches to an app's loggers.

    When ``create_app()`` runs twice in one process (tests do), both apps' handlers sit on the same
    logger. Each record is therefore written only by the app it belongs to: the app of the current
    request or job, else of the current app context, else the most recently initialised app.
    """

    def __init__(self, state: _State) -> None:
        # Only a weak reference to the app's state: a handler left on a global logger must not
        # keep a discarded app (and its open log files) alive.
        ref = weakref.ref(state)

        def dispatch(ev: Event) -> None:
            st = ref()
            if st is not None:
                st.dispatch(ev)

        super().__init__(dispatch=dispatch, redact=state.redactor.text, level=state.settings.level)
        self.state_ref = ref
        global _newest
        _newest = ref

    def emit(self, record: logging.LogRecord) -> None:
        state = self.state_ref()
        if state is None:
            return  # its app is gone; pruned from the logger when the next app attaches
        trace = current_trace()
        if trace is not None:
            if trace.state is not state:
                return
        elif has_app_context():
            if current_app._get_current_object() is not state.app:  # type: ignore[attr-defined]
                return
        elif _newest is None or _newest() is not state:
            return
        super().emit(record)


def _report_write_error(state: _State, file: Any, exc: OSError | None) -> None:
    import sys

    if exc is not None:
        sys.stderr.write(
            f"flask-diaglog: writing {file.path} failed ({exc}); requests are still served, "
            "lines are counted as lost until the file can be written again\n"
        )
    else:
        sys.stderr.write(
            f"flask-diaglog: {file.path} is writable again "
            f"({file.failed_writes} lines lost so far)\n"
        )


def _idempotency_key(value: str) -> str:
    """The string of an ``Idempotency-Key`` structured-field string (quotes optional)."""
    v = value.strip()
    if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        return v[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return v


def _lookup_job_id(req: Request, getter: JobIdGetter | None) -> str | None:
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
                    body = req.get_json(silent=True)
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
