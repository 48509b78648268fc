"""Job leases: what a guarded request holds, shared with its background work, and the renewer.

A :class:`JobLease` is retained by every piece of work started from the request and freed in the
store when the last one releases it. While it is held, the guard's :class:`Renewer` thread
extends its TTL at a third of the TTL, so a long job never expires while it is alive and a dead
holder frees the job after ``DIAGLOG_JOB_TTL``.

A lease handed off to a task queue (:mod:`.handoff`) is held in the store by two *parties*, the
request and the worker: each side has its own :class:`JobLease` with its ``party`` name, and the
job is free when both have left.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
import weakref
from types import TracebackType
from typing import TYPE_CHECKING

from ..context import Lease

if TYPE_CHECKING:
    from .guard import JobGuard

__all__ = ["JobLease", "Leases", "Renewer"]


class JobLease:
    """A held job: reference-counted by the request and its background work.

    Implements the ``Lease`` protocol of :mod:`.context`: ``retain()`` when background work is
    handed the job, ``release()`` when a holder is done. The last ``release()`` frees the job in
    the store (storing the response for replay when there is one and nothing failed).

    It is also a context manager that releases it on exit (failed when the block raised): the
    form a worker uses for a lease it adopted (:func:`~.handoff.adopt`).
    """

    __slots__ = (
        "_count",
        "_lock",
        "ended",
        "failed",
        "guard",
        "job_id",
        "lost",
        "party",
        "record",
        "renew_at",
        "replay",
        "store_lock",
        "ttl",
        "value",
    )

    def __init__(self, guard: JobGuard, job_id: str, value: str, ttl: float, replay: bool) -> None:
        self.guard = guard
        self.job_id = job_id
        self.value = value
        self.ttl = ttl
        self.replay = replay
        #: The finished response, encoded for the store (``replay=True`` only).
        self.record: str | None = None
        #: A holder ended with an exception: nothing is stored for replay.
        self.failed = False
        #: The store gave the job to somebody else (our lease expired during an outage).
        self.lost = False
        #: Freed in the store (or given up); the renewer must not touch it any more.
        self.ended = False
        #: Serialises renewal and release, so a renewal racing the release cannot re-take the
        #: lease after it was freed.
        self.store_lock = threading.Lock()
        self.renew_at = 0.0
        #: The party this lease is in the store, when it is shared (handed off): ``"request"``
        #: on the side that handed it off, the token's party on the worker. ``""`` otherwise.
        self.party = ""
        self._count = 1
        self._lock = threading.Lock()

    def retain(self) -> None:
        with self._lock:
            self._count += 1

    def release(self) -> None:
        # Called from ``finally`` blocks: an exception on its way out means that holder failed.
        if sys.exc_info()[0] is not None:
            self.failed = True
        with self._lock:
            self._count -= 1
            last = self._count == 0
        if last:
            self.guard.finish(self)

    def detach(self) -> None:
        """Stop renewing this lease without freeing the job in the store: its holder hands the
        job on (a task's retry adopts the same hand-off token). Unless somebody adopts it, the
        job is free once ``DIAGLOG_JOB_TTL`` has passed since the last renewal."""
        self.guard.renewer.remove(self)
        with self.store_lock:
            self.ended = True

    def __enter__(self) -> JobLease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.failed = True
        self.release()

    def __repr__(self) -> str:
        return f"<JobLease {self.job_id} holders={self._count}>"


class Leases:
    """Several leases held by one request (stacked guards): retained and released together."""

    __slots__ = ("leases",)

    def __init__(self, *leases: Lease) -> None:
        self.leases = leases

    def retain(self) -> None:
        for lease in self.leases:
            lease.retain()

    def release(self) -> None:
        for lease in reversed(self.leases):
            lease.release()


class Renewer:
    """Renews the TTL of held leases at a third of their TTL, in one daemon thread per guard.

    The thread starts with the first lease (again in a forked child, where the parent's thread
    does not exist). It sleeps until the next renewal is due and, with no lease held, until a
    lease is added: it never polls. Removing the last lease wakes it so it stops waiting for that
    lease. The thread holds the renewer (and so the guard and the app) only weakly: when the app
    is discarded, a finaliser wakes the thread and it ends.
    """

    def __init__(self, guard: JobGuard) -> None:
        self.guard = guard
        self.leases: set[JobLease] = set()
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self.pid = -1
        self.closed = False
        self.renewals = 0
        #: When the thread wakes next on its own (``inf`` while it sleeps until a lease comes).
        self.next_at = math.inf

    def add(self, lease: JobLease) -> None:
        lease.renew_at = time.monotonic() + lease.ttl / 3
        with self.lock:
            if self.pid != os.getpid():
                self._start()
            self.leases.add(lease)
            poke = lease.renew_at < self.next_at
        if poke:  # only when it sleeps past this lease's renewal: not once per request
            self.wake.set()

    def _start(self) -> None:
        # First lease in this process (or in a forked child: the parent's leases are not ours to
        # renew, and its thread and event do not exist here). Called with the lock held.
        self.leases.clear()
        self.pid = os.getpid()
        self.thread = None
        if self.closed:
            return
        self.wake = wake = threading.Event()
        self.next_at = math.inf
        self.thread = threading.Thread(
            target=_run, args=(weakref.ref(self), wake), name="diaglog-lease-renewer", daemon=True
        )
        weakref.finalize(self, wake.set)  # the app is gone: wake the thread so that it ends
        self.thread.start()

    def renew_all_soon(self) -> None:
        """Renew every held lease now (after a store outage, which may have lost them)."""
        with self.lock:
            for lease in self.leases:
                lease.renew_at = 0.0
        self.wake.set()

    def remove(self, lease: JobLease) -> None:
        with self.lock:
            self.leases.discard(lease)
            poke = not self.leases and self.next_at != math.inf
        if poke:  # the last one went: stop waiting for its renewal
            self.wake.set()

    def close(self) -> None:
        self.closed = True
        self.wake.set()
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)

    def tick(self) -> float | None:
        """Renew what is due; the seconds until the next renewal (``None``: until woken,
        ``-1``: closed)."""
        if self.closed:
            return -1.0
        self.wake.clear()  # before the snapshot: an add() after this wakes the wait that follows
        with self.lock:  # snapshot and next_at together: add() sees one or the other
            leases = list(self.leases)
            now = time.monotonic()
            due = min((lease.renew_at for lease in leases), default=math.inf)
            self.next_at = due if due > now else 0.0
        if due > now:
            return None if due == math.inf else due - now
        for lease in leases:
            if lease.renew_at <= now:
                try:
                    self._renew(lease)
                except Exception as exc:  # keep renewing the others; say why
                    lease.renew_at = time.monotonic() + lease.ttl / 3
                    self.guard.emit(
                        "log",
                        logging.ERROR,
                        f"renewing the lease of job {lease.job_id} failed: "
                        f"{type(exc).__name__}: {exc}",
                        None,
                        job_id=lease.job_id,
                        exc=self.guard.rec.format_exc(exc),
                    )
        return 0.0

    def _renew(self, lease: JobLease) -> None:
        guard = self.guard
        lease.renew_at = time.monotonic() + lease.ttl / 3
        with lease.store_lock:
            if lease.ended:
                return  # released meanwhile
            try:
                ok = guard.store.renew(lease.job_id, lease.value, lease.ttl)
            except Exception as exc:
                guard.store_failed(exc, None, f"renewing the lease of job {lease.job_id!r}")
                lease.renew_at = time.monotonic() + min(lease.ttl / 3, 1.0)
                return
            if not ok:
                lease.lost = True
        guard.store_ok(None)
        self.renewals += 1
        if not ok:
            self.remove(lease)
            guard.emit(
                "log",
                logging.WARNING,
                f"job {lease.job_id} lease was taken over by another holder while its work was "
                "still running (it expired, e.g. during a job store outage); the job is no "
                "longer guarded",
                None,
                job_id=lease.job_id,
            )


def _run(ref: weakref.ReferenceType[Renewer], wake: threading.Event) -> None:
    """The renewer thread. Holds its renewer only while renewing, so the app can go away."""
    while True:
        renewer = ref()
        if renewer is None:
            return  # the app was discarded
        wait = renewer.tick()
        del renewer
        if wait is not None and wait < 0:
            return  # closed
        if wait != 0.0:
            wake.wait(wait)
