"""Live events over Socket.IO: the bridge between diaglog's dispatch and Flask-SocketIO.

Enabled by ``DiagLog(app, socketio=socketio)``, or found in ``app.extensions["socketio"]`` (create
the ``SocketIO`` before ``DiagLog``). ``flask_socketio`` is imported only then, not at import.

How an event travels:

1. The recorder hands the :class:`~flask_diaglog.Event` to :class:`LiveBridge` on the
   request thread. The bridge only does ``put_nowait`` on a bounded queue: when the queue is full
   the event is dropped and counted (``bridge.dropped``). The request never waits and never sees
   an exception from the socket layer.
2. One background task per process, started lazily with ``socketio.start_background_task`` on the
   first event (so after gunicorn forks its workers), takes events off the queue and emits
   ``Event.to_dict()`` (redacted at the source) as the Socket.IO event ``"event"`` on the
   namespace (``DIAGLOG_LIVE_NAMESPACE``, default ``/diaglog``) to the rooms that want it.
3. With a message queue (``DIAGLOG_LIVE_QUEUE`` or the SocketIO's own ``message_queue``), the emit
   goes through Redis, so a client connected to any worker hears events from every worker.

Recursion: Socket.IO, Engine.IO and Redis clients log while they emit. Events of the emitting task
and of the ``socketio``/``engineio``/``flask_socketio`` loggers reach only the files.

Clients must authenticate: the token goes in the Socket.IO connect ``auth`` payload
(``{"token": "..."}``; a ``token=`` query parameter is also accepted) and is compared with
``DIAGLOG_LIVE_TOKEN``, or an auth callback (``DiagLog(live_auth=...)``) decides; a feature may
add its own check (``setup(admit_extra=...)``: the dashboard admits its own viewers). Without any
of them, every client is refused. How a client got in decides which rooms its ``subscribe``
messages may join (``unsubscribe`` leaves them): see :mod:`flask_diaglog.liverooms`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .attempts import Attempts, client_of, presented, query_tokens, same_token
from .config import ConfigError
from .lifecycle import at_fork
from .liverooms import MAX_ROOMS, OPERATOR, USER, LiveSubscribe, Subscriber, rooms_for
from .trail import LEVELS

if TYPE_CHECKING:
    from .config import Settings
    from .record import Event, Recorder

__all__ = [
    "EVENT_NAME",
    "LEVELS",
    "QUEUE_SIZE",
    "LiveAuth",
    "LiveBridge",
    "LiveSubscribe",
    "emitter",
    "get_bridge",
    "page_options",
    "rooms_for",
    "setup",
    "socketio_path",
]

logger = logging.getLogger("flask_diaglog.live")

#: The Socket.IO event name every diaglog event is emitted under; the payload is
#: ``Event.to_dict()``, whose ``event`` key holds the kind.
EVENT_NAME = "event"
#: Events waiting to be emitted, per process. Beyond this, new events are dropped and counted.
QUEUE_SIZE = 10_000
#: Loggers whose records never go out on the live stream (they log while emitting).
QUIET_LOGGERS = ("socketio", "engineio", "flask_socketio", "simple_websocket", "redis", "kombu")

#: ``live_auth(auth) -> bool``: decides whether a Socket.IO client may connect. ``auth`` is the
#: connect payload (a dict, or ``None``). ``flask.request`` (headers, cookies, query string) and
#: ``flask.session`` are available inside it.
LiveAuth = Callable[[Any], bool]


class _Emitting(threading.local):
    """Set on the emitting task: events created there (by logging in socket libraries) stay off
    the live stream."""

    active = False


_emitting = _Emitting()
_bridges: weakref.WeakSet[LiveBridge] = weakref.WeakSet()


def _reset_after_fork() -> None:
    """In a forked child (a ``--preload`` app's worker): fresh locks (one held at fork time would
    stay locked), and a queue identity of its own: python-socketio's queue managers ignore messages
    with their own ``host_id``, so workers with the master's would drop each other's events."""
    for bridge in list(_bridges):
        bridge._start_lock = threading.Lock()
        bridge._count_lock = threading.Lock()
        manager = getattr(getattr(bridge.socketio, "server", None), "manager", None)
        if manager is not None and isinstance(getattr(manager, "host_id", None), str):
            manager.host_id = uuid.uuid4().hex
            if getattr(manager, "redis_url", None) is not None:
                manager.connected = False  # RedisManager: reconnect from this process


class LiveBridge:
    """The live sink of one app: a bounded queue, a background emitter, and the namespace's
    connect/subscribe handlers.

    Counters: ``queued``, ``emitted``, ``dropped`` (queue full) and ``failed`` (emit raised).
    """

    sink_name = "live"

    def __init__(
        self,
        socketio: Any,
        namespace: str = "/diaglog",
        *,
        token: str | None = None,
        auth: LiveAuth | None = None,
        admit_extra: LiveAuth | None = None,
        subscribe: LiveSubscribe | None = None,
        max_rooms: int = MAX_ROOMS,
        maxsize: int = QUEUE_SIZE,
        on_error: Callable[[str, BaseException | None], None] | None = None,
        attempts: Attempts | None = None,
    ) -> None:
        self.socketio = socketio
        self.namespace = namespace
        self.token = token
        self.auth = auth
        #: Another ``(auth) -> bool`` check that admits clients as operators (every room; e.g.
        #: the dashboard's viewers).
        self.admit_extra = admit_extra
        #: ``subscribe(kind, value) -> bool``: the rooms a client ``auth`` admitted may join.
        self.subscribe = subscribe
        #: Rooms one client may be in at once (``DIAGLOG_LIVE_MAX_ROOMS``).
        self.max_rooms = max_rooms
        #: The app's token-guess counts (:mod:`flask_diaglog.attempts`), or ``None``: not counted.
        self.attempts = attempts
        #: True when events flow to the namespace (``DIAGLOG_LIVE``), not just its handlers.
        self.streaming = False
        self.maxsize = maxsize
        #: ``on_error(message, exc)``: called once per kind of trouble, the first drop (on a
        #: request thread) and the first failed emit (on the emitting task).
        self.on_error = on_error
        self.queued = 0
        self.emitted = 0
        self.dropped = 0
        self.failed = 0
        self._reported: set[str] = set()
        self._q: queue.Queue[Event | None] = queue.Queue(maxsize)
        self._qpid = os.getpid()
        self._pid = -1
        self._task: Any = None
        self._start_lock = threading.Lock()
        self._count_lock = threading.Lock()
        at_fork(after_in_child=_reset_after_fork)  # with the first bridge, not at import
        _bridges.add(self)

    # -- the sink (request thread) -----------------------------------------------------------

    def __call__(self, ev: Event) -> None:
        if _emitting.active:
            return  # created while emitting (a socket library logged): files only
        if ev.kind == "log" and ev.logger.split(".", 1)[0] in QUIET_LOGGERS:
            return  # Socket.IO, Engine.IO and Redis clients log while emitting: files only
        if self._pid != os.getpid():
            self._start()
        try:
            self._q.put_nowait(ev)
        except queue.Full:
            with self._count_lock:
                self.dropped += 1
                first = self.dropped == 1
            if first:
                self._report("dropped", None)
            return
        with self._count_lock:
            self.queued += 1

    @property
    def started(self) -> bool:
        """True once this process's background task was started."""
        return self._task is not None and self._pid == os.getpid()

    def _start(self) -> None:
        with self._start_lock:
            if self._pid == os.getpid():
                return
            if getattr(self.socketio, "server", None) is None:
                return  # SocketIO.init_app has not run yet; events wait in the queue
            if self._qpid != os.getpid():  # after fork: the parent's queue is not ours
                self._q = queue.Queue(self.maxsize)
                self._qpid = os.getpid()
            self._task = self.socketio.start_background_task(self._run, self._q)
            self._pid = os.getpid()

    # -- the emitter (background task) -------------------------------------------------------

    def _run(self, q: queue.Queue[Event | None]) -> None:
        _emitting.active = True
        threaded = getattr(self.socketio, "async_mode", "threading") == "threading"
        while True:
            if threaded:
                ev = q.get()
            else:  # eventlet/gevent: poll cooperatively (they need monkey patching anyway)
                try:
                    ev = q.get_nowait()
                except queue.Empty:
                    self.socketio.sleep(0.02)
                    continue
            try:
                if ev is None:
                    return
                self._emit(ev)
            finally:
                q.task_done()

    def _emit(self, ev: Event) -> None:
        data = ev.to_dict()
        try:
            try:
                self.socketio.emit(EVENT_NAME, data, namespace=self.namespace, to=rooms_for(ev))
            except TypeError:
                # A field that JSON cannot encode: send its string form instead.
                data = json.loads(json.dumps(data, default=str))
                self.socketio.emit(EVENT_NAME, data, namespace=self.namespace, to=rooms_for(ev))
            self.emitted += 1
        except Exception as exc:
            self.failed += 1
            if self.failed == 1:
                self._report("failed", exc)

    def _report(self, what: str, exc: BaseException | None) -> None:
        if what in self._reported:
            return
        self._reported.add(what)
        msg = (
            "flask-diaglog: the live event queue is full; live events are dropped and counted "
            "(the log files still get every line)"
            if what == "dropped"
            else "flask-diaglog: emitting a live event failed; further failures are counted"
        )
        hook = self.on_error
        with contextlib.suppress(Exception):
            if hook is not None:
                hook(msg, exc)
            else:
                sys.stderr.write(msg + "\n")

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued event was emitted (tests, shutdown). False on timeout."""
        q = self._q
        deadline = time.monotonic() + timeout
        while q.unfinished_tasks:
            if not self.started or time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Stop this process's background task after it emitted what is queued."""
        if not self.started:
            return
        with contextlib.suppress(queue.Full):
            self._q.put(None, timeout=timeout)
        task = self._task
        join = getattr(task, "join", None)
        if join is not None:
            join(timeout)
        self._task = None
        self._pid = -1

    def stats(self) -> dict[str, int]:
        """The counters as a dict."""
        return {
            "queued": self.queued,
            "emitted": self.emitted,
            "dropped": self.dropped,
            "failed": self.failed,
        }

    # -- the namespace (Socket.IO handlers) --------------------------------------------------

    def admission(self, auth: Any) -> str | None:
        """How the client gets in: ``OPERATOR`` when the connect payload (or the ``token`` query
        parameter) carries the token or ``admit_extra`` allows it, else ``USER`` when the auth
        callback allows it, else ``None`` (refused).

        A client held off for guessing (:mod:`flask_diaglog.attempts`) is never an operator, the
        right token included. A handshake's tokens are counted before they are judged, in one step
        with that check, and taken back when it is admitted (also by the auth callback: the app's
        own credentials are no guesses): one refused as a whole counts every token it presented."""
        from flask import request

        attempts, expected, n = self.attempts, self.token, presented(request, auth)
        client = client_of(request.remote_addr)
        held = attempts is not None and attempts.take(client, n) > 0
        given = auth.get("token") if isinstance(auth, Mapping) else None
        if given is None:  # one token a handshake
            given = asked[0] if len(asked := query_tokens(request)) == 1 else None
        if not held and expected and isinstance(given, str) and same_token(given, expected):
            way: str | None = OPERATOR
        elif not held and self.admit_extra is not None and self.admit_extra(auth):
            way = OPERATOR
        else:
            way = USER if self.auth is not None and self.auth(auth) else None
        if way is not None and attempts is not None and not held:
            attempts.forgive(client, n)
        return way

    def authorized(self, auth: Any) -> bool:
        """True when :meth:`admission` lets the client in."""
        return self.admission(auth) is not None

    def register(self) -> None:
        """Install the ``connect``, ``subscribe`` and ``unsubscribe`` handlers on the namespace."""
        from flask import request
        from flask_socketio import ConnectionRefusedError, join_room, leave_room

        sio = self.socketio
        ns = self.namespace
        # The client (how it got in, its rooms), kept in its connection's WSGI environ.
        key = f"flask_diaglog.live.subscriber:{ns}"

        def on_connect(auth: Any = None) -> None:
            admission = self.admission(auth)
            request.environ[key] = Subscriber(admission)
            if admission is None:
                raise ConnectionRefusedError("unauthorized")

        def change_rooms(data: Any, join: bool) -> dict[str, Any]:
            client = request.environ.setdefault(key, Subscriber(None))
            try:
                if join:
                    names = client.subscribe(data, self.subscribe, self.max_rooms)
                else:
                    names = client.unsubscribe(data)
            except ValueError as exc:
                return {"ok": False, "error": str(exc)}
            for room in names:
                (join_room if join else leave_room)(room)
            return {"ok": True, "rooms": names}

        def on_subscribe(data: Any = None) -> dict[str, Any]:
            return change_rooms(data, True)

        def on_unsubscribe(data: Any = None) -> dict[str, Any]:
            return change_rooms(data, False)

        sio.on("connect", namespace=ns)(on_connect)
        sio.on("subscribe", namespace=ns)(on_subscribe)
        sio.on("unsubscribe", namespace=ns)(on_unsubscribe)


def get_bridge(app: Any = None) -> LiveBridge | None:
    """The live bridge of ``app`` (default: ``current_app``), or ``None`` when there is none."""
    from flask import current_app

    app = app if app is not None else current_app._get_current_object()  # type: ignore[attr-defined]
    bridge = getattr(app.extensions.get("diaglog"), "live", None)
    return bridge if isinstance(bridge, LiveBridge) else None


def _use_queue(socketio: Any, url: str) -> None:
    """Make the SocketIO publish and receive through the message queue at ``url``."""
    server = getattr(socketio, "server", None)
    if server is None:
        # SocketIO() not initialised yet: its init_app builds the queue from this option.
        socketio.server_options.setdefault("message_queue", url)
        return
    from socketio import KombuManager, PubSubManager, RedisManager

    if isinstance(server.manager, PubSubManager):
        return  # the user's own message_queue wins
    if server.manager_initialized:
        raise ConfigError(
            f"DIAGLOG_LIVE_QUEUE={url!r} cannot be applied: the SocketIO already serves clients. "
            "Pass message_queue= to SocketIO(...) instead."
        )
    cls = RedisManager if url.startswith(("redis://", "rediss://", "unix://")) else KombuManager
    manager = cls(url, channel="flask-socketio")
    manager.set_server(server)
    server.manager = manager


def socketio_path(socketio: Any) -> str:
    """The URL prefix of Socket.IO's transport requests (long polls, websockets), which are not
    requests worth a log line."""
    mw = getattr(socketio, "sockio_mw", None)
    return getattr(mw, "engineio_path", None) or "/socket.io/"


def setup(
    socketio: Any,
    settings: Settings,
    rec: Recorder,
    auth: Callable[[Any], bool] | None = None,
    *,
    admit_extra: Callable[[Any], bool] | None = None,
    subscribe: LiveSubscribe | None = None,
    attempts: Attempts | None = None,
) -> LiveBridge | None:
    """Create the live bridge for ``socketio`` (``None``: there is none) and subscribe it to
    ``rec``. ``auth`` and ``admit_extra`` may each admit clients (:meth:`LiveBridge.admission`);
    ``subscribe`` decides the rooms of those ``auth`` admitted (:mod:`~flask_diaglog.liverooms`);
    ``attempts`` holds token guessers off (:mod:`~flask_diaglog.attempts`).

    The namespace handlers are registered whenever there is a SocketIO. Events flow only when
    ``DIAGLOG_LIVE`` is on: by default that is "not in test mode"; ``DIAGLOG_LIVE=True`` forces it
    on (to test the bridge itself), ``False`` turns it off.

    Two set-ups are warned about at startup (a WARNING of the ``flask_diaglog.live`` logger): no
    way for a client to get in, and ``subscribe`` without ``auth`` (operators alone connect, and
    they are never asked, so ``subscribe`` would never be called).
    """
    if socketio is None:
        if settings.live:
            raise ConfigError(
                "DIAGLOG_LIVE is on but there is no Flask-SocketIO: pass DiagLog(app, "
                "socketio=socketio), or create SocketIO(app) before DiagLog(app)."
            )
        return None
    live = settings.live if settings.live is not None else not settings.testing
    bridge = LiveBridge(
        socketio,
        settings.live_namespace,
        token=settings.live_token,
        auth=auth,
        admit_extra=admit_extra,
        subscribe=subscribe,
        max_rooms=settings.live_max_rooms,
        maxsize=QUEUE_SIZE,
        on_error=rec.report_internal,
        attempts=attempts,
    )
    bridge.register()
    if bridge.token is None and bridge.auth is None and admit_extra is None:
        logger.warning(
            "flask-diaglog: live clients are refused until DIAGLOG_LIVE_TOKEN or "
            "DiagLog(live_auth=...) allows them"
        )
    if subscribe is not None and auth is None:
        logger.warning(
            "flask-diaglog: DiagLog(live_subscribe=...) is never called without "
            "DiagLog(live_auth=...): only operators (DIAGLOG_LIVE_TOKEN, the dashboard's viewers) "
            "can connect, and they may join every room unasked. Pass live_auth to admit your "
            "users, or drop live_subscribe"
        )
    if live:
        if settings.live_queue:
            _use_queue(socketio, settings.live_queue)
        rec.subscribe(bridge, "live")
        bridge.streaming = True
    return bridge


def page_options(bridge: LiveBridge | None) -> dict[str, str] | None:
    """What a same-origin page needs to follow the stream: ``path`` (see :func:`socketio_path`)
    and ``namespace``; ``None`` when no events flow."""
    if bridge is None or not bridge.streaming:
        return None
    return {"path": socketio_path(bridge.socketio), "namespace": bridge.namespace}


def emitter(settings: Settings, rec: Recorder) -> LiveBridge | None:
    """Live events of a process without a Socket.IO server (a Celery or RQ worker): a write-only
    Flask-SocketIO emitter on the message queue ``DIAGLOG_LIVE_QUEUE``, subscribed to ``rec``.

    The web processes' SocketIO, listening on the same queue, delivers the events to the clients
    subscribed to their job or request. ``None`` when no queue is set or live events are off
    (``DIAGLOG_LIVE``; off by default in test mode).
    """
    url = settings.live_queue
    on = settings.live if settings.live is not None else not settings.testing
    if not url or not on:
        return None
    try:
        from flask_socketio import SocketIO
    except ImportError as exc:
        raise ConfigError(
            f"DIAGLOG_LIVE_QUEUE={url!r} is set, but flask-socketio is not installed in this "
            "worker: pip install 'flask-diaglog[socketio]' (or unset DIAGLOG_LIVE_QUEUE)"
        ) from exc
    socketio = SocketIO(message_queue=url, channel="flask-socketio")
    bridge = LiveBridge(
        socketio, settings.live_namespace, maxsize=QUEUE_SIZE, on_error=rec.report_internal
    )
    rec.subscribe(bridge, "live")
    return bridge
