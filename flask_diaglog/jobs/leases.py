"""Job leases: what a guarded request holds, shared with its background work, and the renewer.

A :class:`JobLease` is retained by every piece of work started from the request and freed in the
store when the last one releases it. While it is held, the guard's :class:`Renewer` thread
extends its TTL at a third of the TTL, so a long job never expires while it is alive and a dead
holder frees the job after ``DIAGLOG_JOB_TTL``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
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
    """

    __slots__ = (
        "_count",
        "_lock",
        "ended",
        "failed",
        "guard",
        "job_id",
        "lost",
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
    """One daemon thread per guard that extends the TTL of held leases at a third of their TTL.

    Started lazily on the first lease, and again in a forked child (gunicorn workers), where the
    parent's thread does not exist.
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
        #: When the thread wakes next on its own; an earlier lease pokes it.
        self.next_at = 0.0

    def add(self, lease: JobLease) -> None:
        lease.renew_at = time.monotonic() + lease.ttl / 3
        with self.lock:
            if self.pid != os.getpid():
                self.leases.clear()  # the parent's leases are not ours to renew
                self.thread = None
                self.pid = os.getpid()
            self.leases.add(lease)
            if self.thread is None and not self.closed:
                self.thread = threading.Thread(
                    target=self._run, name="diaglog-lease-renewer", daemon=True
                )
                self.thread.start()
            poke = lease.renew_at < self.next_at
        if poke:  # only when it sleeps past this lease's renewal: not once per request
            self.wake.set()

    def renew_all_soon(self) -> None:
        """Renew every held lease now (after a store outage, which may have lost them)."""
        with self.lock:
            for lease in self.leases:
                lease.renew_at = 0.0
        self.wake.set()

    def remove(self, lease: JobLease) -> None:
        with self.lock:
            self.leases.discard(lease)

    def close(self) -> None:
        self.closed = True
        self.wake.set()
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)

    def _run(self) -> None:
        while not self.closed:
            self.wake.clear()  # before the snapshot: an add() after this wakes the wait below
            with self.lock:  # snapshot and next_at together: add() sees one or the other
                leases = list(self.leases)
                now = time.monotonic()
                wait = min(min(lease.renew_at for lease in leases) - now, 60.0) if leases else 60.0
                self.next_at = now + wait if wait > 0 else 0.0
            if wait > 0:
                self.wake.wait(wait)
                continue
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
