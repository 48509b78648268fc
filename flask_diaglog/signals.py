"""Blinker signals: one per event kind.

Every signal is sent with the Flask app object as sender (never the proxy) and one keyword
argument, ``event``: the same :class:`~flask_diaglog.events.Event` record the files get.
Connect with ``signal.connect(receiver, app)`` to hear one app only. A receiver that raises never
breaks the request: the failure is counted and reported once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from blinker import Namespace, Signal

from .events import Event

__all__ = [
    "SIGNALS",
    "hang_detected",
    "job_finished",
    "job_rejected",
    "job_started",
    "log_record",
    "request_failed",
    "request_finished",
    "request_started",
    "signal_for",
    "stage_finished",
]

_signals = Namespace()

#: A request began (``event.kind == "request_start"``); sent before the view runs.
#: Sender: the app. Keyword: ``event``.
request_started = _signals.signal("diaglog-request-started")
#: A stage finished, successfully or not (``"stage"``). Sender: the app. Keyword: ``event``.
stage_finished = _signals.signal("diaglog-stage-finished")
#: A request ended (``"request_end"``), including streamed ones when the stream closed.
#: Sender: the app. Keyword: ``event``.
request_finished = _signals.signal("diaglog-request-finished")
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

#: Event kind to signal.
SIGNALS: dict[str, Signal] = {
    "request_start": request_started,
    "stage": stage_finished,
    "request_end": request_finished,
    "request_error": request_failed,
    "log": log_record,
    "job_start": job_started,
    "job_end": job_finished,
    "job_rejected": job_rejected,
    "hang": hang_detected,
}


def signal_for(kind: str) -> Signal:
    """The signal sent for events of ``kind``."""
    return SIGNALS[kind]


class _Receiver:
    """Names a failing receiver in the failure counts: ``signal <name> receiver <qualname>``."""

    __slots__ = ("sink_name",)

    def __init__(self, sig: Signal, receiver: Callable[..., Any]) -> None:
        name = getattr(sig, "name", "?")
        what = getattr(receiver, "__qualname__", None) or repr(receiver)
        module = getattr(receiver, "__module__", None)
        self.sink_name = f"signal {name} receiver {module + '.' if module else ''}{what}"


class SignalSink:
    """Sends each event on its signal, only when somebody listens (no cost otherwise).

    Receivers are called one by one, so one that raises is counted and reported (through
    ``on_fail``, once per receiver) without keeping the others from hearing the event.
    """

    sink_name = "signals"

    def __init__(self, app: Any, on_fail: Callable[[object, BaseException], None]) -> None:
        self.app = app
        self.on_fail = on_fail

    def __call__(self, event: Event) -> None:
        sig = SIGNALS.get(event.kind)
        if sig is None or not sig.receivers:
            return
        app = self.app
        for receiver in sig.receivers_for(app):
            try:
                receiver(app, event=event)
            except Exception as exc:
                self.on_fail(_Receiver(sig, receiver), exc)
