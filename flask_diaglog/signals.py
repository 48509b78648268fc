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

import warnings
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
