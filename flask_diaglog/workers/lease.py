"""The job guard following a task: the guarded request's lease handed off into the task message,
and held by the worker while the task runs.

This module is the one place the worker integrations touch the job guard's hand-off API
(:mod:`flask_diaglog.jobs.handoff`):

* :func:`hand_off_current` on the sending side: a task sent from a guarded request gets a
  hand-off token; a task sent by a task run that holds its job (a child, or the next task of a
  chain or a ``link`` callback, which Celery sends just after the run) gets a token of its own,
  so the job stays held until it has ended too; a retry sent by a task that holds its job gets
  that same token again;
* :func:`hold` on the worker: adopts the token for the task's run and frees the job when the run
  ends, except when the run ended by handing the job on to its own retry (a Celery retry that
  sent the token on, an RQ job with retries left): the retry adopts the same token. A run can
  keep the lease past its end (:attr:`Holding.lingers`) until :meth:`Holding.finish`: Celery
  sends a chain's next task after the run;
* :func:`give_up` for a task that ended outside a run (revoked, expired, cancelled, stopped,
  killed at its time limit).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from ..context import current_trace, trace_current
from ..jobs import HandOffError, JobStoreUnavailable, abandon, adopt, hand_off
from ..jobs.handoff import hand_on

if TYPE_CHECKING:
    from ..context import Trace
    from ..jobs import JobLease
    from .common import Binding

__all__ = ["LEASE", "Holding", "current_holding", "give_up", "hand_off_current", "hold"]

#: The header (Celery) or ``job.meta`` key (RQ) of the hand-off token a task holds.
LEASE = "diaglog_lease"
_WARNING = logging.WARNING


class Holding:
    """The lease a task run holds: its token, and whether the run sent it on (to a retry)."""

    __slots__ = ("lease", "lingers", "problem", "resent", "task_id", "token", "trace")

    def __init__(self, token: Mapping[str, Any] | None, task_id: str | None = None) -> None:
        self.token = token
        #: The queue's id of the task run (a task sent with the same id is its retry).
        self.task_id = task_id
        self.lease: JobLease | None = None
        #: Why the token could not be adopted (the task then runs unguarded).
        self.problem: str | None = None
        self.resent = False
        #: Set during the run: a run that returns keeps its lease until :meth:`finish`.
        self.lingers = False
        #: The run's trace (its ids), for tasks sent after the run on its behalf.
        self.trace: Trace | None = None

    def finish(self) -> None:
        """Free the lease a lingering run kept (once; later calls do nothing)."""
        lease, self.lease = self.lease, None
        if self.lingers and lease is not None and not lease.ended:
            with trace_current(self.trace):
                lease.release()

    def usable(self) -> JobLease | None:
        """The lease, while this run still holds it (not ended, lost or handed to a retry)."""
        lease = self.lease
        if lease is None or lease.ended or lease.lost:
            return None
        return lease


_holding: ContextVar[Holding | None] = ContextVar("flask_diaglog_task_lease", default=None)


def hand_off_current(
    trace: Trace, task_id: str | None = None, held: Holding | None = None
) -> Mapping[str, Any] | None:
    """The token to put in a task sent now from ``trace``, or ``None``.

    From a guarded request: a new hand-off (:func:`~flask_diaglog.jobs.hand_off`; a store outage
    raises ``JobStoreUnavailable``, the guard's 503). From a task run that holds its job (``held``,
    default: the run in progress): its retry (sent with the run's own ``task_id``) gets the same
    token; any other task a new one of its own (a store outage then sends it without one, with a
    WARNING line: the run that sends it does not fail for the guard's sake).
    """
    if held is None:
        held = _holding.get()
    if held is not None:
        lease = held.usable()
        if lease is None:
            return None
        if task_id is not None and task_id == held.task_id and held.token is not None:
            held.resent = True
            return held.token
        try:
            return hand_on(lease)
        except JobStoreUnavailable:
            lease.guard.emit(
                "log",
                _WARNING,
                f"a task sent by job {lease.job_id}'s task does not hold the job: the job store "
                "is unreachable",
                current_trace(),
                job_id=lease.job_id,
            )
            return None
    if trace.kind != "request" or trace.lease is None or trace is not current_trace():
        return None
    return hand_off()


def current_holding() -> Holding | None:
    """The lease holding of the task run in progress in this context, if any."""
    return _holding.get()


@contextmanager
def hold(
    b: Binding,
    token: Any,
    keep: Callable[[BaseException, Holding], bool] | None = None,
    task_id: str | None = None,
    trace: Trace | None = None,
) -> Iterator[Holding]:
    """Hold the job lease named by ``token`` while the body runs.

    The job is freed when the body ends (as failed when it raised), except when it raised an
    exception ``keep(exc, holding)`` accepts (the queue will run the task again with the same
    token): then the lease is detached (no longer renewed, not freed) and left to that retry,
    which adopts it. A token that cannot be adopted here sets :attr:`Holding.problem` and the
    task runs unguarded. A body that set :attr:`Holding.lingers` and returned keeps the lease
    until :meth:`Holding.finish`. The lease is freed with ``trace`` current (the run's ids):
    a line the guard writes then (its job was no longer held) carries them.
    """
    held = Holding(token if isinstance(token, Mapping) else None, task_id)
    if token is not None and b.guard is not None:
        try:
            held.lease = adopt(token, b.app)
        except HandOffError as exc:
            held.problem = f"header {LEASE} cannot be held here ({exc}); it runs unguarded"
    elif token is not None:
        held.problem = (
            f"it carries a job lease (header {LEASE}), but diaglog is disabled here; it runs "
            "unguarded"
        )
    ctx = _holding.set(held)
    lease = held.lease
    try:
        yield held
    except BaseException as exc:
        if lease is not None:
            if keep is not None and keep(exc, held):
                lease.detach()  # the retry adopts it (before DIAGLOG_JOB_TTL passes)
            else:
                with trace_current(trace):
                    lease.release()  # an exception on its way: the job failed, no replay record
        raise
    else:
        if lease is not None and not held.lingers:
            with trace_current(trace):
                lease.release()
    finally:
        _holding.reset(ctx)


def give_up(b: Binding, token: Any) -> None:
    """The task of ``token`` ended without a run that could free its job (revoked, expired,
    cancelled, stopped, killed at its time limit): its part of the job is given up, as a
    failure."""
    if token is None or b.guard is None:
        return
    try:
        abandon(token, b.app)
    except HandOffError as exc:
        b.guard.emit(
            "log",
            _WARNING,
            f"the job lease of an ended task could not be given up ({exc}); it frees itself "
            "at its TTL",
            None,
        )
