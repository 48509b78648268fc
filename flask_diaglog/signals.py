"""Blinker signals, one per event kind: the names and nothing else.

Every signal is sent with the Flask app object as sender (never the proxy) and one keyword
argument, ``event``: a :class:`~flask_diaglog.Event` with the same parts as the line the files got.
Connect with ``signal.connect(receiver, app)`` to hear one app only. A receiver that raises never
breaks the request: the failure is counted and reported once. Events are built only while a
signal has a receiver, so an unconnected signal costs nothing.

.. versionchanged:: 0.2
   ``request_started`` and ``request_finished`` are now ``diaglog_request_started`` and
   ``diaglog_request_finished``, so they cannot be mistaken for Flask's signals of the same
   names. The old names still import, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
import weakref
from collections.abc import Callable
from types import MethodType
from typing import Any

from blinker import Namespace, Signal

__all__ = [
    "SIGNALS",
    "diaglog_progress",
    "diaglog_request_finished",
    "diaglog_request_started",
    "hang_detected",
    "job_finished",
    "job_rejected",
    "job_started",
    "log_record",
    "request_failed",
    "signal_for",
    "stage_finished",
]

_signals = Namespace()

#: A request began (``event.kind == "request_start"``); sent before the view runs.
#: Sender: the app. Keyword: ``event``.
diaglog_request_started = _signals.signal("diaglog-request-started")
#: A stage finished, successfully or not (``"stage"``). Sender: the app. Keyword: ``event``.
stage_finished = _signals.signal("diaglog-stage-finished")
#: A request ended (``"request_end"``), including streamed ones when the stream closed.
#: Sender: the app. Keyword: ``event``.
diaglog_request_finished = _signals.signal("diaglog-request-finished")
#: A request raised an unhandled exception (``"request_error"``). Sender: the app.
#: Keyword: ``event`` (``event.exc`` holds the traceback).
request_failed = _signals.signal("diaglog-request-failed")
#: The app logged a record during a request or job (``"log"``). Sender: the app.
#: Keyword: ``event``.
log_record = _signals.signal("diaglog-log-record")
#: Background work started (``"job_start"``). Sender: the app. Keyword: ``event``.
job_started = _signals.signal("diaglog-job-started")
#: Background work ended (``"job_end"``; ``event.fields["ok"]`` tells the outcome).
#: Sender: the app. Keyword: ``event``.
job_finished = _signals.signal("diaglog-job-finished")
#: A duplicate request for an active job was refused with 409 (``"job_rejected"``).
#: Sender: the app. Keyword: ``event``.
job_rejected = _signals.signal("diaglog-job-rejected")
#: In-flight work was reported as hung by the watchdog (``"hang"``). Sender: the app.
#: Keyword: ``event``.
hang_detected = _signals.signal("diaglog-hang-detected")

#: A request or job reported its progress (``"progress"``, see :func:`flask_diaglog.progress`).
#: Sender: the app. Keyword: ``event``.
diaglog_progress = _signals.signal("diaglog-progress")

#: Event kind to signal.
SIGNALS: dict[str, Signal] = {
    "request_start": diaglog_request_started,
    "stage": stage_finished,
    "request_end": diaglog_request_finished,
    "request_error": request_failed,
    "log": log_record,
    "job_start": job_started,
    "job_end": job_finished,
    "job_rejected": job_rejected,
    "hang": hang_detected,
    "progress": diaglog_progress,
}

_RENAMED = {
    "request_started": "diaglog_request_started",
    "request_finished": "diaglog_request_finished",
}


def signal_for(kind: str) -> Signal:
    """The signal sent for events of ``kind``."""
    return SIGNALS[kind]


# -- dispatch ---------------------------------------------------------------------------------
#
# The recorder calls each receiver itself (a failure is isolated per receiver), and blinker's
# ``receivers_for`` generator with its ``make_id`` cost about 7 k instructions per event. So the
# receivers a signal calls for a sender are resolved once, through ``receivers_for`` (blinker's
# rules: connected to ANY or to that sender), and kept until a receiver connects or disconnects
# (blinker's public ``receiver_connected`` and ``receiver_disconnected`` signals) or the sender
# goes. Receivers are kept by weak reference, so a weakly connected receiver still dies (and is
# skipped) as it would in blinker. blinker's private ``_clear_state()`` (no event) empties
# ``signal.receivers``, which the recorder tests before it sends, and a later connect is seen.

#: A receiver as kept here: call it for the receiver, or ``None`` when it is not to be called.
_ReceiverRef = Callable[[], "Callable[..., Any] | None"]

#: ``(signal, id(sender))`` to the receivers to call. Read without the lock; never rebound.
_resolved: dict[tuple[Signal, int], list[_ReceiverRef]] = {}
#: The senders with resolved receivers, by id: their death forgets what was resolved for them.
_senders: dict[int, weakref.ref[Any]] = {}
#: Signals whose connects and disconnects are watched.
_watched: set[Signal] = set()
#: Bumped by every change: a resolution that saw one under way is used once, not kept.
_generation = 0
# Reentrant: a sender's death (a weakref callback) can run in a collection inside the lock.
_lock = threading.RLock()


def _receivers(signal: Signal, sender: Any) -> list[_ReceiverRef]:
    """The receivers ``signal.send(sender)`` would call now, as references to call."""
    refs = _resolved.get((signal, id(sender)))
    return refs if refs is not None else _resolve(signal, sender)


class _Recheck:
    """A receiver of a send under way when the signal's receivers changed: it is called only if
    blinker still calls it for the sender (blinker skips a receiver disconnected since its send
    began, for instance by an earlier receiver)."""

    __slots__ = ("ref", "sender", "signal")

    def __init__(self, signal: Signal, sender: Any, ref: _ReceiverRef) -> None:
        self.signal = signal
        self.sender = sender
        self.ref = ref

    def __call__(self) -> Callable[..., Any] | None:
        receiver = self.ref()
        if receiver is None or receiver not in list(self.signal.receivers_for(self.sender)):
            return None
        return receiver


def _resolve(signal: Signal, sender: Any) -> list[_ReceiverRef]:
    with _lock:
        if signal not in _watched:
            signal.receiver_connected.connect(_forget, weak=False)
            signal.receiver_disconnected.connect(_forget, weak=False)
            _watched.add(signal)
        generation = _generation
    refs = [_ref(r) for r in signal.receivers_for(sender)]
    key = id(sender)
    with _lock:
        if generation == _generation:
            if key not in _senders:
                with contextlib.suppress(TypeError):  # a sender not weakly referable: not kept
                    _senders[key] = weakref.ref(sender, _sender_gone)
            if key in _senders:
                _resolved[signal, key] = refs
                return refs
    # Not kept, so not rechecked by _forget: checked one by one as they are called.
    return [_Recheck(signal, sender, ref) for ref in refs]


def _ref(receiver: Callable[..., Any]) -> _ReceiverRef:
    if isinstance(receiver, MethodType):
        return _MethodRef(receiver)
    try:
        return weakref.ref(receiver)
    except TypeError:  # blinker holds it strongly (weak=False), and so may this until it changes
        return lambda: receiver


class _MethodRef:
    """A bound method by weak reference, gone with its object or its function, as blinker keeps
    one. Not weakref.WeakMethod: its internal callback, always set, can run at interpreter exit
    after the WeakMethod itself is gone and print an ignored AttributeError (seen in the tests
    when one was still kept here at exit)."""

    __slots__ = ("func", "obj")

    def __init__(self, method: MethodType) -> None:
        self.obj = weakref.ref(method.__self__)
        self.func = weakref.ref(method.__func__)

    def __call__(self) -> Callable[..., Any] | None:
        obj, func = self.obj(), self.func()
        return None if obj is None or func is None else MethodType(func, obj)


def _forget(*_: Any, **__: Any) -> None:
    """A receiver connected or disconnected: resolve again, and recheck the sends under way (the
    kept lists are changed in place, their length kept, while they may be being iterated)."""
    global _generation
    with _lock:
        _generation += 1
        for (signal, key), refs in _resolved.items():
            sender = _senders[key]()
            if sender is not None:  # else no send for it is under way
                refs[:] = [_Recheck(signal, sender, ref) for ref in refs]
        _resolved.clear()


def _sender_gone(ref: weakref.ref[Any]) -> None:
    # Before its id can be reused: forget what was resolved for it.
    with _lock:
        for key in [key for key, value in _senders.items() if value is ref]:
            del _senders[key]
            for resolved in [k for k in _resolved if k[1] == key]:
                del _resolved[resolved]


def __getattr__(name: str) -> Any:
    new = _RENAMED.get(name)
    if new is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"flask_diaglog.signals.{name} is now {new} (it shared its name with Flask's own "
        f"signal); import {new} instead",
        DeprecationWarning,
        stacklevel=2,
    )
    return globals()[new]
