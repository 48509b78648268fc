"""The ``DiagLog`` extension: set-up and wiring per app, background work, and introspection.

``init_app`` reads the settings, opens the files, builds the app's one
:class:`~flask_diaglog.record.Recorder`, and hands each part only what it needs: the request
trail (:mod:`.wsgi`, :mod:`.hooks`) and the logging bridge get the recorder; the job guard the
recorder, the settings and a store; the watchdog the registry; the live bridge a SocketIO and the
recorder to subscribe to; the dashboard the settings and two callables. Everything lives in one
typed :class:`AppState` in ``app.extensions["diaglog"]``.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flask import Flask, current_app, has_app_context

from . import live
from .attempts import Attempts
from .background import install_sigterm, release_unused, run_job, running
from .config import ConfigError, Settings, load_settings
from .context import Lease, Trace, current_trace, new_request_id, settled_trace
from .files import FileSet
from .files.console import ConsoleSink
from .files.render import RENDERERS
from .files.writer import LogFile
from .hooks import register
from .jobids import JobIdGetter, JobIds
from .jobs import JobGuard, make_store
from .live import LiveBridge, LiveSubscribe
from .logbridge import AppHandler, attach
from .record import Recorder
from .redact import Redactor
from .watchdog import InFlight, all_entries, entries
from .wsgi import RequestTrail

__all__ = ["AppState", "DiagLog", "inflight", "stats"]

R = TypeVar("R")


@dataclass(eq=False)
class AppState:
    """Everything diaglog keeps for one app, in ``app.extensions["diaglog"]``."""

    ext: DiagLog
    app: Flask
    settings: Settings
    #: The one recorder of this app (``None`` while ``DIAGLOG_ENABLED`` is off).
    recorder: Recorder | None = None
    registry: InFlight | None = None
    files: FileSet | None = None
    console: ConsoleSink | None = None
    handler: AppHandler | None = None
    loggers: list[logging.Logger] = field(default_factory=list)
    trail: RequestTrail | None = None
    guard: JobGuard | None = None
    live: LiveBridge | None = None
    #: ``app.wsgi_app`` as it was before diaglog wrapped it.
    wsgi_app: Any = None
    #: Kept alive here: blinker holds the ``got_request_exception`` receiver weakly.
    exception_receiver: Callable[..., None] | None = None

    @property
    def active(self) -> bool:
        return self.recorder is not None

    def stats(self) -> dict[str, Any]:
        """Counters: failed file writes, dropped console lines, sink failures, replay evictions."""
        rec = self.recorder
        out: dict[str, Any] = {
            "failed_writes": self.files.failed_writes if self.files else 0,
            "console_dropped": self.console.dropped if self.console else 0,
            "sink_failures": dict(rec.failures) if rec is not None else {},
            "replay_evictions": self.guard.replay_evictions if self.guard is not None else 0,
        }
        return out


def _get_state(app: Flask | None = None) -> AppState:
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


def inflight(app: Flask | None = None, *, stacks: bool = False) -> list[dict[str, Any]]:
    """The requests and background jobs in flight in this process, oldest first.

    :param app: the app to list. Default: ``current_app`` inside an app context; outside one,
        every app of this process that uses DiagLog.
    :param stacks: also include ``stack``, the current Python stack of each entry's thread.

    Each entry is a dict: ``kind`` (``"request"`` or ``"job"``), ``request_id``, ``job_id``,
    ``name`` (a job's function), ``method``, ``path``, ``start`` (epoch seconds), ``elapsed_ms``,
    ``stage`` (the innermost open stage, or ``None``), ``stages`` (finished stages: name to ms),
    ``thread`` (name), ``thread_id``, ``hung`` (hang reports made so far) and ``pid``.
    The registry is per process: under gunicorn, each worker answers for itself.
    """
    if app is not None or has_app_context():
        registry = _get_state(app).registry
        return entries(registry, stacks) if registry is not None else []
    return all_entries(stacks)


def stats(app: Flask | None = None) -> dict[str, Any]:
    """Counters of ``app`` (default: ``current_app``): ``failed_writes`` (lines the files could
    not take), ``console_dropped`` (lines the console queue dropped) and ``sink_failures``
    (failures per subscriber or signal receiver, and of the ``DiagLog(job_id=...)`` callable
    under ``job_id``) and ``replay_evictions`` (stored responses the
    memory job store evicted to stay under ``DIAGLOG_JOB_REPLAY_MAX_*``).

    .. versionadded:: 0.2
    """
    return _get_state(app).stats()


class DiagLog:
    """Request diagnostics for a Flask app.

    ``DiagLog(app)`` or, with an app factory, ``diaglog = DiagLog()`` then
    ``diaglog.init_app(app)``. One instance may serve several apps; state is kept per app in
    ``app.extensions["diaglog"]``.

    :param socketio: a ``flask_socketio.SocketIO`` for live events (optional).
    :param live_auth: a callable ``(auth payload) -> bool`` that admits live clients (optional).
    :param live_subscribe: a callable ``(kind, value) -> bool`` that decides which rooms a client
        ``live_auth`` admitted may join (optional; see "Who may subscribe to what" on the live
        events page).
    :param job_id: a callable ``(request) -> str | None`` that replaces the built-in job id lookup.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        socketio: Any = None,
        job_id: JobIdGetter | None = None,
        live_auth: Callable[[Any], bool] | None = None,
        live_subscribe: LiveSubscribe | None = None,
    ) -> None:
        #: The Flask-SocketIO object live events go to, if any.
        self.socketio = socketio
        #: ``live_auth(auth) -> bool`` decides which live clients may connect (see live.py).
        self.live_auth = live_auth
        #: ``live_subscribe(kind, value) -> bool`` decides the rooms of clients ``live_auth``
        #: admitted (default: job and request rooms, not ``all`` or ``level``).
        self.live_subscribe = live_subscribe
        #: The job id lookup override, if any.
        self.job_id_getter = job_id
        # The apps this instance is registered on (weakly): background work started outside
        # any app context belongs to the only one, if there is only one.
        self._apps: weakref.WeakSet[Flask] = weakref.WeakSet()
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
        state = AppState(ext=self, app=app, settings=settings)
        app.extensions["diaglog"] = state
        self._apps.add(app)
        if not settings.enabled:
            return
        s = settings
        redactor = Redactor(s.redact)
        state.files = files = _open_files(s)
        state.registry = registry = InFlight(hang_after=max(0.0, float(s.hang_after or 0.0)))
        state.recorder = rec = Recorder(
            files=files,
            render=RENDERERS[s.format],
            level=s.level,
            registry=registry,
            sender=app,
            redact=redactor.text,
        )
        registry.recorder = rec
        rec.progress_interval = s.progress_interval
        rec.shutdown_grace = s.shutdown_grace
        if s.shutdown_grace > 0 and not s.testing:
            install_sigterm()  # only when SIGTERM is unhandled (flask run, the example server)
            running().hook()  # now: a hook cannot be added once the interpreter is stopping
        state.guard = JobGuard(rec, s, make_store(s.job_store), self.job_id_getter)

        exclude = list(s.exclude)
        socketio = self.socketio or app.extensions.get("socketio")
        admit_viewers = None
        attempts = Attempts()  # token guesses, counted by the dashboard and the live socket
        if s.dashboard:
            from .dashboard import socket_admission

            admit_viewers = socket_admission(s.dashboard_token)  # the dashboard's own rule
        state.live = live.setup(
            socketio,
            s,
            rec,
            self.live_auth,
            admit_extra=admit_viewers,
            subscribe=self.live_subscribe,
            attempts=attempts,
        )
        if state.live is not None:
            exclude.append(live.socketio_path(socketio))
        if s.dashboard:
            from .dashboard import create_blueprint

            bp = create_blueprint(
                s,
                state.stats,
                lambda: entries(registry),
                live=live.page_options(state.live),
                attempts=attempts,
            )
            app.register_blueprint(bp)
            exclude.append(s.dashboard_url)
        if s.console:
            state.console = console = ConsoleSink(rec.render, level=s.level)
            rec.subscribe(console, "console")

        state.handler = handler = AppHandler(rec, s.level, console=s.console)
        names = list(s.loggers)  # empty: every logger
        state.loggers = attach(
            handler,
            names,
            s.level,
            app_logger=app.logger,
            redact=redactor.text,
            adjust=s.adjust_levels,
            replace_handlers=s.replace_handlers,
        )

        state.trail = trail = RequestTrail(
            app.wsgi_app,
            rec,
            redactor,
            JobIds(self.job_id_getter, rec.failed),
            exclude=tuple(dict.fromkeys(exclude)),
            server_timing=s.server_timing,
            slow_ms=s.slow_ms,
            trust_request_id=s.trust_request_id,
            testing=s.testing,
        )
        state.exception_receiver = register(app, trail, self.job_id_getter, strict=s.strict_ids)
        state.wsgi_app = app.wsgi_app
        app.wsgi_app = trail  # type: ignore[method-assign]
        if s.shutdown_grace > 0 and not s.testing:
            running().serve(trail)  # requests on daemon threads are waited for too

    # -- background work --------------------------------------------------------------------

    def _recorder(self) -> tuple[Recorder | None, Flask | None]:
        trace = current_trace()
        if trace is not None and trace.rec is not None:
            return trace.rec, trace.rec.sender
        if has_app_context():
            app: Flask | None = current_app._get_current_object()  # type: ignore[attr-defined]
        else:  # a script or module level: the only app of this instance, if there is one
            apps = list(self._apps)
            app = apps[0] if len(apps) == 1 else None
        st = app.extensions.get("diaglog") if app is not None else None
        if st is not None and st.ext is self:
            return st.recorder, st.app
        return None, None

    def wrap(self, fn: Callable[..., R]) -> Callable[..., R]:
        """Return a callable that runs ``fn`` as background work of the current request.

        It carries the request and job ids (and a copy of all context variables), pushes an app
        context, and writes ``job_start``/``job_end`` lines to ``jobs.log``. Exceptions are logged
        with their traceback and re-raised (so an executor's future sees them). A job guarded by
        ``@guard_job`` stays active until the first call of the wrapped callable returns, or until
        the callable is garbage-collected without having run.
        """
        return self._wrap(fn, settled_trace(), *self._recorder())

    def _wrap(
        self, fn: Callable[..., R], parent: Trace | None, rec: Recorder | None, app: Flask | None
    ) -> Callable[..., R]:
        ctx = contextvars.copy_context()
        lease = parent.lease if parent is not None else None
        if lease is not None:
            lease.retain()
        held: list[Lease | None] = [lease]
        name = getattr(fn, "__qualname__", None) or repr(fn)

        @functools.wraps(fn)
        def runner(*args: Any, **kwargs: Any) -> R:
            job_lease, held[0] = held[0], None
            return ctx.run(run_job, rec, app, parent, job_lease, name, fn, args, kwargs)

        if lease is not None:
            # Never run (a cancelled future, a dropped callable): free the job when it is gone.
            weakref.finalize(runner, release_unused, held)
        return runner

    def spawn(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> threading.Thread:
        """Run ``fn(*args, **kwargs)`` in a new thread as background work of this request.

        See :meth:`wrap`. The thread is not a daemon, so a graceful shutdown waits for it. An
        exception in ``fn`` is written with its traceback to ``jobs.log`` and ``errors.log``.
        """
        trace = settled_trace()
        rec, app = self._recorder()
        runner = self._wrap(fn, trace, rec, app)
        logged = rec is not None
        job_id = trace.job_id if trace is not None else None

        def target() -> None:
            try:
                runner(*args, **kwargs)
            except BaseException:
                if not logged:
                    raise  # no diaglog here: let threading.excepthook print it
                # else: already in jobs.log and errors.log with its traceback

        # Never a daemon, whatever the calling thread is: a stopping process waits for the job
        # (up to DIAGLOG_SHUTDOWN_GRACE, see background.py).
        t = threading.Thread(
            target=target, name=f"diaglog-job-{job_id or new_request_id()}", daemon=False
        )
        t.start()
        return t

    # -- introspection ----------------------------------------------------------------------

    def stats(self, app: Flask | None = None) -> dict[str, Any]:
        """Counters for ``app`` (default: ``current_app``): failed writes, drops, sink failures."""
        return _get_state(app).stats()


def _open_files(s: Settings) -> FileSet:
    try:
        os.makedirs(s.log_dir, exist_ok=True)
        if not os.access(s.log_dir, os.W_OK | os.X_OK):
            raise PermissionError(f"no write permission on {s.log_dir}")
        return FileSet(
            s.log_dir,
            max_bytes=s.max_bytes,
            backup_count=s.backup_count,
            compress=s.compress,
            on_error=_report_write_error,
        )
    except OSError as exc:
        raise ConfigError(
            f"DIAGLOG_LOG_DIR={s.log_dir!r} cannot be used for log files: "
            f"{exc.strerror or exc}. Create it or point DIAGLOG_LOG_DIR "
            "(config key or environment variable) to a writable directory."
        ) from exc


def _report_write_error(file: LogFile, exc: OSError | None) -> None:
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
