"""Progress of a request or a job, and a job id chosen by the view.

This module owns the two calls a view or a job makes about itself:

* :func:`progress` records a ``progress`` line (rate-limited per request or job by
  ``DIAGLOG_PROGRESS_INTERVAL``), sends the ``diaglog_progress`` signal and live event, and keeps
  the latest value on the trace, where ``inflight()`` and the dashboard read it.
* :func:`set_job_id` gives the current request a job id it created itself (an upload that answers
  with a new job id), so its later lines, its end line and ``trace <job_id>`` include it.
"""

from __future__ import annotations

import logging
import math
import time

from .context import current_trace, is_valid_id
from .trail import progress_msg

__all__ = ["progress", "set_job_id"]

_INFO = logging.INFO
_monotonic = time.monotonic


def progress(value: float, total: float | None = None, message: str | None = None) -> None:
    """Report how far the current request or background job has got.

    ``progress(0.4)`` says 40 %; ``progress(3, 7)`` says step 3 of 7; ``message`` says what it is
    doing. The latest value is always visible in flight (``inflight()``, the dashboard); a line,
    a signal and a live event are made at most once per ``DIAGLOG_PROGRESS_INTERVAL`` seconds per
    request or job, except the first report and a finished one (fraction 1.0), which are always
    recorded. Outside a request or job it does nothing.

    :raises ValueError: for a negative, infinite or NaN ``value``, or a ``total`` that is not
        more than 0. A fraction above 1 is capped at 1.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"progress value must be a finite number, not {value!r}")
    if value < 0:
        raise ValueError(f"progress value must be 0 or more, not {value!r}")
    if total is not None:
        if (
            isinstance(total, bool)
            or not isinstance(total, int | float)
            or not math.isfinite(total)
            or total <= 0
        ):
            raise ValueError(f"progress total must be a number more than 0, not {total!r}")
        fraction = min(1.0, value / total)
        step: float | None = value
    else:
        fraction = min(1.0, float(value))
        step = None
    text = str(message) if message is not None else None
    trace = current_trace()
    if trace is None:
        return
    trace.progress = (fraction, text)
    rec = trace.rec
    if rec is None:
        return
    now = _monotonic()
    last = trace.progress_at
    if last is not None and fraction < 1.0 and now - last < rec.progress_interval:
        return
    trace.progress_at = now
    if text is not None:
        text = rec.redact(text)
    rec.record(
        "progress",
        trace,
        _INFO,
        progress_msg(fraction, step, total, text),
        {
            "fraction": round(fraction, 3),
            "step": step,
            "total": total,
            "message": text,
        },
    )


def set_job_id(job_id: str) -> None:
    """Make ``job_id`` the job id of the current request (or job) from now on.

    Use it in a view that creates a job (an upload that answers with a new job id): the
    request's later lines, its end line and its in-flight entry carry the id, so
    ``flask diaglog trace <job_id>`` finds the request that created the job. Background work
    spawned afterwards inherits it.

    :raises ValueError: for an id that is not 1 to 128 characters of ``[A-Za-z0-9._:-]``.
    :raises RuntimeError: outside a request or background job.
    """
    if not is_valid_id(job_id):
        raise ValueError(
            f"job id {job_id!r} is not valid: use 1 to 128 characters of letters, digits, "
            "'.', '_', ':' and '-'"
        )
    trace = current_trace()
    if trace is None:
        raise RuntimeError("set_job_id() needs a request or a background job")
    trace.job_id = job_id
