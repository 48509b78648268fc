"""Handing a guarded job to a task queue: :func:`hand_off` in the view, :func:`adopt` on the worker.

A ``@guard_job`` view that enqueues a Celery or RQ task must keep the job active until the task
ends, on whichever host it runs. The lease is then held in the store by two *parties*: the
request, and the worker that adopts it. The job is free when both have left.

In the view (a request guarded by ``@guard_job``)::

    token = hand_off()                  # a dict of str, JSON-serialisable; None if no job is held
    task.delay(..., diaglog_lease=token)   # or in the task's message headers

The request's end no longer frees the job (its response is still kept for replay, stored when
the job ends). On the worker, with the same ``DIAGLOG_JOB_STORE`` (a Redis URL)::

    with adopt(token, app):             # takes the lease over: same token, so no gap
        run_the_task()                  # renewed every TTL/3 while it runs

``adopt`` returns the :class:`~.leases.JobLease`: a context manager that frees the job on exit
(success or exception; a failed task stores no replay record), and a ``Lease`` that
``flask_diaglog.background.run_job`` releases when the job it runs ends. A task that never
starts (revoked, or its message lost) is given up with :func:`abandon`; if nobody adopts or
abandons it, the job is free once the hand-off TTL has passed after the request ended. A worker
that is killed (SIGKILL, a hard time limit) frees it after the lease TTL, since nobody renews it
(the Celery integration frees it sooner: its main process gives a killed task's part up).

With the memory store, a token can only be adopted by the same store object (same app, same
process); anything else raises :class:`HandOffError`.

A token holds: ``diaglog`` (format version ``"1"``), ``job_id``, ``lease`` (the lease's owner
token), ``party`` (this hand-off's party name), ``store`` (:meth:`~.stores.JobStore.handoff_name`),
``ttl`` (the lease TTL in seconds) and ``replay`` (``"1"`` when the view stores its response).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from ..context import current_trace, is_valid_id
from ..problems import JobStoreUnavailable
from ..values import ConfigError, parse_ttl
from .guard import JobGuard, get_job_guard
from .leases import JobLease, Leases
from .stores import LOST, RETAKEN

__all__ = ["HandOffError", "abandon", "adopt", "hand_off", "hand_on"]

#: The party name of the request that handed its job off.
REQUEST = "request"
_VERSION = "1"
_FIELDS = ("diaglog", "job_id", "lease", "party", "store", "ttl", "replay")


class HandOffError(ValueError):
    """A hand-off token that cannot be adopted here: malformed, or from another store."""


def hand_off(job_id: str | None = None, *, ttl: float | None = None) -> dict[str, str] | None:
    """Hand the job held by this request to a task: the request's end no longer frees it.

    :param job_id: which job, when stacked guards hold several (default: the only one held).
    :param ttl: how long the job stays held, after the request ended, while no worker has
        adopted it yet (default: the lease TTL). Make it longer than the time a task may wait
        in its queue: a task adopted later finds its job free again (or taken by a new request).
    :returns: the token for :func:`adopt` (a dict of str), or ``None`` when this request holds
        no job (no job id on a view that does not require one, the store failed open, diaglog
        disabled): then enqueue the task without one.

    Call it for each task that should hold the job; the job is free when all of them and the
    request have ended. A store failure answers 503 (:class:`JobStoreUnavailable`).
    """
    if ttl is not None:  # as DIAGLOG_JOB_TTL is checked: a ConfigError (a ValueError) naming it
        ttl = parse_ttl(ttl, "ttl", "hand_off()")
    trace = current_trace()
    held = _held(trace.lease if trace is not None else None)
    if job_id is not None:
        held = [lease for lease in held if lease.job_id == job_id]
    if not held:
        return None
    if len(held) > 1:
        ids = ", ".join(lease.job_id for lease in held)
        raise ValueError(f"hand_off(): this request holds several jobs ({ids}); name one")
    return hand_on(held[0], ttl=ttl)


def hand_on(lease: JobLease, *, ttl: float | None = None) -> dict[str, str]:
    """Make a new party of the job ``lease`` holds, for a task about to be sent: the job stays
    held until that task (as well as the current holders) has ended.

    :func:`hand_off` does this for the lease of the current request; the worker integrations do
    it for the lease a running task adopted, when the task sends another task (a child, the
    next task of a chain, a ``link`` callback). ``ttl``: as for :func:`hand_off`. A store
    failure raises :class:`JobStoreUnavailable`.
    """
    if ttl is not None:
        ttl = parse_ttl(ttl, "ttl", "hand_on()")
    guard = lease.guard
    trace = current_trace()
    caller = lease.party or REQUEST
    party = f"w{os.urandom(6).hex()}"
    try:
        ok = guard.store.share(lease.job_id, lease.value, caller, (party,), ttl or lease.ttl)
    except Exception as exc:
        guard.store_failed(exc, trace, f"handing job {lease.job_id!r} off")
        raise JobStoreUnavailable(lease.job_id) from exc
    guard.store_ok(trace)
    if not ok:
        lease.lost = True
        who = "request" if caller == REQUEST else "task"
        _lost(guard, lease.job_id, f"when the {who} handed it off")
    lease.party = caller
    return {
        "diaglog": _VERSION,
        "job_id": lease.job_id,
        "lease": lease.value,
        "party": party,
        "store": guard.store.handoff_name(),
        "ttl": repr(lease.ttl),
        "replay": "1" if lease.replay else "0",
    }


def adopt(token: Mapping[str, Any], app: Any = None) -> JobLease:
    """Take over a handed-off job on the worker: renew its lease until it is released.

    :param token: what :func:`hand_off` returned (after a trip through JSON, for example).
    :param app: the worker's Flask app registered with DiagLog (default: ``current_app``). Its
        ``DIAGLOG_JOB_STORE`` must be the Redis the web app uses.

    Returns the lease, held once: ``with adopt(token): ...`` releases it on exit, or pass it to
    ``flask_diaglog.background.run_job``. If the job was taken over by a new request
    meanwhile (the task waited longer than the hand-off TTL), the lease is marked ``lost``, a
    WARNING line says so, and the task runs unguarded. A store outage does not stop the task:
    the renewer re-takes the lease when the store is back.
    """
    guard = get_job_guard(app)
    job_id, value, party, ttl, replay = _parse(token, guard)
    lease = JobLease(guard, job_id, value, ttl, replay)
    lease.party = party
    try:
        outcome = guard.store.adopt(job_id, value, party, ttl)
    except Exception as exc:
        guard.store_failed(exc, None, f"adopting job {job_id!r}")
        guard.renewer.add(lease)
        lease.renew_at = 0.0  # keep trying: renewing re-takes it once the store answers
        return lease
    guard.store_ok(None)
    if outcome == LOST:
        lease.lost = True
        lease.ended = True  # nothing of ours to free
        _lost(guard, job_id, "before the worker adopted it (it waited past the hand-off TTL)")
    else:
        if outcome == RETAKEN:
            guard.emit(
                "log",
                logging.WARNING,
                f"job {job_id} was free when the worker adopted it: its hand-off TTL had passed "
                f"(or this worker uses another store than the web app: {guard.store.describe()}); "
                "it is held again from now on",
                None,
                job_id=job_id,
            )
        guard.renewer.add(lease)
    return lease


def abandon(token: Mapping[str, Any], app: Any = None) -> bool:
    """The task of ``token`` will not run (revoked before it started, its message dropped, its
    process terminated from outside): give its part of the job up, as a failure (no replay
    record is stored). ``False`` when the job was no longer held by this hand-off. Safe to call
    after the task released its lease, and more than once."""
    guard = get_job_guard(app)
    job_id, value, party, _, _ = _parse(token, guard)
    try:
        ok = guard.store.leave(job_id, value, party, failed=True)
    except Exception as exc:
        guard.store_failed(exc, None, f"abandoning job {job_id!r} (it frees itself at its TTL)")
        return False
    guard.store_ok(None)
    return ok


def _held(lease: object) -> list[JobLease]:
    if isinstance(lease, JobLease):
        return [lease]
    if isinstance(lease, Leases):
        return [inner for outer in lease.leases for inner in _held(outer)]
    return []


def _lost(guard: JobGuard, job_id: str, when: str) -> None:
    guard.emit(
        "log",
        logging.WARNING,
        f"job {job_id} was taken over by another holder {when}; its task runs unguarded",
        current_trace(),
        job_id=job_id,
    )


def _parse(token: Mapping[str, Any], guard: JobGuard) -> tuple[str, str, str, float, bool]:
    if not isinstance(token, Mapping):
        raise HandOffError(
            f"a hand-off token is a dict from hand_off(), not {type(token).__name__}"
        )
    missing = [f for f in _FIELDS if not isinstance(token.get(f), str)]
    if missing:
        raise HandOffError(f"the hand-off token lacks {', '.join(missing)} (not from hand_off()?)")
    if token["diaglog"] != _VERSION:
        raise HandOffError(f"hand-off token version {token['diaglog']!r} is not supported here")
    job_id = token["job_id"]
    if not is_valid_id(job_id) or not is_valid_id(token["party"]) or not token["lease"]:
        raise HandOffError("the hand-off token has an invalid job id, party or lease")
    try:  # the lease TTL, DIAGLOG_JOB_TTL's: what its key takes, a token takes
        ttl = parse_ttl(token["ttl"], "ttl", "the hand-off token")
    except ConfigError as exc:
        raise HandOffError(str(exc)) from None
    if token["replay"] not in ("0", "1"):
        raise HandOffError(f"the hand-off token has an invalid replay {token['replay']!r}")
    mine, theirs = guard.store.handoff_name(), token["store"]
    if mine != theirs and (mine.startswith("memory:") or theirs.startswith("memory:")):
        raise HandOffError(
            f"job {job_id} was handed off by the job store {theirs!r} and cannot be adopted by "
            f"{mine!r}: with the memory store a hand-off only works within one process and app. "
            "Set DIAGLOG_JOB_STORE to the same Redis URL on the web app and the workers."
        )
    return job_id, token["lease"], token["party"], ttl, token["replay"] == "1"
