"""The in-flight registry and the hang watchdog: "where is it stuck?" answered by diaglog itself.

**Registry.** :class:`InFlight` is kept by the recorder: it adds a trace on
``request_start``/``job_start``, and removes it when the work ends (:meth:`Recorder.close
<flask_diaglog.record.Recorder.close>`, called before the ``request_end``/``job_end`` line is
built). Those end records are written on every path (normal end, exception, propagated exception
in ``TESTING``, a streamed body closed early, a 400/403 raised in ``before_request``, background
work that raises), so the registry empties itself. Per request it costs one dict insert and one
dict delete, and no lock. It holds at most ``maxsize`` entries; beyond that, new work is counted
in ``overflow`` and reported once.

**Watchdog.** One daemon thread per process watches every registry of the process. It is started
lazily by the first trace that needs watching (so a gunicorn worker forked from a master starts
its own) and sleeps on a condition until the earliest deadline. When it finds nothing in flight it
sleeps one more ``DIAGLOG_HANG_AFTER`` (work that starts meanwhile cannot be due before then, so it
needs no wake-up call), and only after a second idle scan without a timeout. A busy process
therefore never wakes the thread per request; an idle one costs two scans, then nothing.

Work running longer than ``DIAGLOG_HANG_AFTER`` seconds gets a WARNING
``hang`` event with its elapsed time, current stage and the Python stack of the thread running it;
the report repeats at 2x, 4x, 8x ... that time while the work keeps running. ``trace.hung`` counts
the reports, and the end line of the work notes ``was_hung(N)``. ``DIAGLOG_HANG_AFTER=0`` turns
the watchdog off (the registry still answers :func:`inflight`).

**A hang line never follows the end line, and the end line counts every one before it.** The
watchdog takes the trace out of the registry while it records the report
(:meth:`InFlight.reporting`), under the registry's lock, and puts it back after; an end removes
the trace before it builds its line (before it reads ``trace.hung`` for ``was_hung``). So either
the end comes first, and the watchdog finds the trace gone and reports nothing, or the report
does, and the end, whose delete then misses, waits for the report in :meth:`InFlight.discard`
(only then: the common end takes no lock) and counts it. The app's code that a report runs
before its line (the job-id callable) runs before the trace is taken; the receivers of the
report run after its line, so an end waits for them at most :data:`SETTLE_WAIT` seconds, and not
at all in the watchdog's own thread (a receiver that ends the work itself).

**Access.** :func:`inflight` lists the in-flight work (for the dashboard, an admin endpoint or a
debugger).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import weakref
from collections.abc import Iterator
from time import perf_counter
from types import FrameType
from typing import TYPE_CHECKING, Any

from .jobids import url_job_id
from .lifecycle import at_exit, at_fork
from .stacks import format_stack, thread_frames, thread_names
from .trail import hang_msg

if TYPE_CHECKING:
    from .context import Trace
    from .record import Recorder

__all__ = ["InFlight", "entries"]

_INF = float("inf")
#: Longest an end waits for the hang report of its own work being recorded meanwhile (the
#: report's line is out within microseconds; what may take longer is its signal receivers).
SETTLE_WAIT = 1.0


class _Report:
    """A trace the watchdog is reporting: out of the registry meanwhile (see
    :meth:`InFlight.reporting`)."""

    __slots__ = ("done", "ended", "name", "owner")

    def __init__(self, name: str | None) -> None:
        self.name = name
        self.owner = threading.get_ident()
        #: The work ended during the report: it is not put back.
        self.ended = False
        self.done = threading.Event()


class InFlight:
    """Every in-flight request and background job of one app in this process.

    Maps each :class:`~flask_diaglog.context.Trace` to its job name (``None`` for a request).
    ``hang_after`` is in seconds (``0`` = not watched).
    """

    def __init__(
        self, recorder: Recorder | None = None, maxsize: int = 10_000, hang_after: float = 0.0
    ) -> None:
        #: Where hang reports are recorded (set once the app's recorder exists).
        self.recorder = recorder
        self.maxsize = maxsize
        self.hang_after = hang_after
        #: Work that was not tracked because the registry was full.
        self.overflow = 0
        self.overflow_reported = 0
        self._items: dict[Trace, str | None] = {}
        #: The traces being reported right now, out of ``_items`` meanwhile.
        self._reports: dict[Trace, _Report] = {}
        #: Taken by the watchdog around a report, by the listings, and by an end only when its
        #: trace is not in ``_items`` (being reported, or not tracked): never by a common end.
        self._lock = threading.Lock()
        _watchdog.watch(self)

    def add(self, trace: Trace, name: str | None = None) -> None:
        """Track ``trace`` (the recorder calls this for its start record)."""
        items = self._items
        if len(items) >= self.maxsize:
            self.overflow += 1
            return
        items[trace] = name
        hang_after = self.hang_after
        # Wake (or start) the watchdog only when this deadline is earlier than the one it
        # sleeps towards: once per idle-to-busy change, not once per request.
        if hang_after and trace.t0 + hang_after < _watchdog.wake_at:
            _watchdog.poke()

    def discard(self, trace: Trace) -> None:
        """Stop tracking ``trace`` (:meth:`Recorder.close <flask_diaglog.record.Recorder.close>`
        calls this as the work ends, before its end line is built). Returns once no hang report
        of it can start any more, and a report started before has counted itself in
        ``trace.hung``."""
        try:
            del self._items[trace]  # a delete costs less than pop(); try costs nothing
        except KeyError:  # being reported right now, or never tracked (the registry was full)
            self._settle(trace)

    def _settle(self, trace: Trace) -> None:
        """End ``trace`` while the watchdog may be reporting it: wait for the report's line."""
        with self._lock:
            report = self._reports.get(trace)
            if report is None:
                self._items.pop(trace, None)  # put back by a report that ended meanwhile
                return
            report.ended = True
        if report.owner != threading.get_ident():  # else a receiver of the report ends it
            report.done.wait(SETTLE_WAIT)

    @contextlib.contextmanager
    def reporting(self, trace: Trace) -> Iterator[bool]:
        """Hold ``trace`` out of the registry while its hang report is recorded: true when it was
        still in flight (else it ended: report nothing). It is put back after, unless it ended
        meanwhile; its end waits for the report (see :meth:`discard`)."""
        with self._lock:
            try:
                report = self._reports[trace] = _Report(self._items.pop(trace))
            except KeyError:  # its end took it out
                report = None
        if report is None:
            yield False
            return
        try:
            yield True
        finally:
            with self._lock:
                del self._reports[trace]
                if not report.ended:
                    self._items[trace] = report.name
            report.done.set()

    def items(self) -> list[tuple[Trace, str | None]]:
        """A consistent copy of (trace, job name) pairs, the ones being reported included."""
        with self._lock:
            pairs = list(self._items.copy().items())
            pairs += [(t, r.name) for t, r in self._reports.items()]
        return pairs

    def traces(self) -> list[Trace]:
        return [t for t, _ in self.items()]

    def __contains__(self, trace: object) -> bool:
        return trace in self._items or trace in self._reports

    def __len__(self) -> int:
        return len(self._items) + len(self._reports)

    def clear(self) -> None:
        """Forget every trace (in a forked child: the parent's work does not run there)."""
        self._items.clear()
        self._reports.clear()
        self._lock = threading.Lock()  # the fork may have copied it taken by a report


class _Watchdog:
    """The per-process watchdog thread (one for all registries)."""

    def __init__(self) -> None:
        self.registries: weakref.WeakSet[InFlight] = weakref.WeakSet()
        #: perf_counter time the thread sleeps towards; ``inf`` while it is not running, while it
        #: scans, or after two idle scans, so that every new trace pokes it then. After the first
        #: idle scan it is one hang period ahead: no trace starting later can be due before it.
        self.wake_at = _INF
        self._reset()
        #: Scans that raised (a bug in diaglog; the thread keeps going).
        self.failures = 0
        #: Scans made (each wake-up makes one).
        self.scans = 0
        #: Scans in a row that found nothing in flight.
        self.idle_scans = 0

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._poked = False
        self._stopping = False
        self.wake_at = _INF

    def watch(self, registry: InFlight) -> None:
        """Watch ``registry`` (the first one registers :meth:`after_fork` with the process)."""
        at_fork(after_in_child=self.after_fork)
        self.registries.add(registry)

    def after_fork(self) -> None:
        """In a forked child: the parent's thread and its in-flight work do not exist here."""
        self._reset()
        for reg in list(self.registries):
            reg.clear()

    def poke(self) -> None:
        """Start the thread if needed and make it rescan now."""
        if self._poked and self._thread is not None:
            # A rescan is already due, and it starts after this trace was added (the thread
            # clears the flag, under the lock, before it scans): no need to take the lock. Under
            # a burst of requests during a scan, only the first one pays for the wake-up.
            return
        with self._cond:
            if self._stopping:
                return
            if self._thread is None or not self._thread.is_alive():
                self._start()
            self._poked = True
            self._cond.notify()

    def _start(self) -> None:
        t = threading.Thread(target=self._run, name="diaglog-watchdog", daemon=True)
        try:
            t.start()
        except RuntimeError:  # interpreter shutting down: nothing left to watch
            return
        self._thread = t
        at_exit(self.stop)

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the thread (at interpreter exit; also usable in tests). Never blocks for long."""
        with self._cond:
            self._stopping = True
            self.wake_at = -_INF  # nothing pokes a stopped watchdog
            self._cond.notify_all()
            t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                if self._poked:  # woken by work that started: traffic, not idleness
                    self.idle_scans = 0
                self._poked = False
                self.wake_at = _INF
            try:
                next_at = self.scan()
            except Exception as exc:  # never let the thread die: retry in a second
                self.failures += 1
                if self.failures == 1:
                    with contextlib.suppress(Exception):
                        sys.stderr.write(
                            f"flask-diaglog: watchdog scan failed ({exc!r}); retrying every "
                            "second, further failures are counted, not printed\n"
                        )
                next_at = perf_counter() + 1.0
            if not self._sleep(next_at):
                return

    def _sleep(self, next_at: float) -> bool:
        """Sleep until ``next_at`` or a poke; ``False`` when the watchdog is stopping."""
        with self._cond:
            if self._stopping:
                return False
            if not self._poked:
                self.wake_at = next_at
                self._cond.wait(None if next_at == _INF else max(0.0, next_at - perf_counter()))
            return True

    def scan(self) -> float:
        """Report the work that is due; return the next deadline (``inf``: nothing to watch)."""
        self.scans += 1
        now = perf_counter()
        next_at = _INF
        idle_for = _INF  # the shortest hang_after of the watched registries
        due: list[tuple[InFlight, Trace, str | None]] = []
        for reg in list(self.registries):
            hang_after = reg.hang_after
            if reg.overflow > reg.overflow_reported:
                _report_overflow(reg)
            if not hang_after:
                continue
            if not len(reg):
                idle_for = min(idle_for, hang_after)
                continue
            for trace, name in reg.items():
                at = trace.t0 + hang_after * 2.0**trace.hung
                if at <= now:
                    due.append((reg, trace, name))
                    at = trace.t0 + hang_after * 2.0 ** (trace.hung + 1)
                next_at = min(next_at, at)
        if due:
            frames = thread_frames()
            names = thread_names()
            try:
                for reg, trace, name in due:
                    if trace in reg:  # it may have ended a moment ago (checked again, held)
                        _report(reg, trace, name, frames.get(trace.thread), names)
            finally:
                del frames  # frames reference every thread's locals: do not keep them
        if next_at != _INF:
            self.idle_scans = 0
            return next_at
        # Nothing in flight. Work starting from now on is due no earlier than now + idle_for, so
        # sleeping that long needs no poke from it: under steady traffic the requests never wake
        # the thread (a wake-up per request costs a thread switch, measured in the HTTP
        # benchmark). Only after a second idle scan in a row does it sleep without a timeout; a
        # poke starts the count again: steady traffic wakes it about twice a period, never per
        # request.
        self.idle_scans += 1
        if self.idle_scans >= 2 or idle_for == _INF:
            return _INF
        return now + idle_for


_watchdog = _Watchdog()


def _report(
    reg: InFlight,
    trace: Trace,
    name: str | None,
    frame: FrameType | None,
    names: dict[int, str],
) -> None:
    rec = reg.recorder
    if rec is None:
        trace.hung += 1
        return
    resolve = trace.resolve
    if resolve is not None:  # the app's job-id callable, if any: before the trace is held
        resolve(trace, False)
    ms = trace.elapsed_ms()
    current = trace.current_stage
    thread_name = names.get(trace.thread, str(trace.thread))
    if trace.kind == "job":
        what = f"job {name or '?'}"
        if trace.method or trace.path:
            what += f" (from {trace.method} {trace.path})"
    else:
        what = f"{trace.method} {trace.path}"
    stack = rec.redact(format_stack(frame, trace.thread, names))
    with reg.reporting(trace) as in_flight:
        if not in_flight:
            return  # it ended meanwhile: its end line is out, no report may follow it
        trace.hung += 1  # before the line: an end line built from now on says was_hung
        n = trace.hung
        fields: dict[str, Any] = {
            "method": trace.method,
            "path": trace.path,
            "name": name,
            "duration_ms": round(ms, 3),
            "stage": current,
            "stages": dict(trace.stage_totals()) or None,  # a copy: receivers may change it
            "hung": n,
            "thread_id": trace.thread,
        }
        rec.record(
            "hang",
            trace,
            logging.WARNING,
            hang_msg(what, ms, current, n, thread_name),
            fields,
            exc=stack,
            thread=thread_name,  # the thread that is stuck, not the watchdog's own
        )


def _report_overflow(reg: InFlight) -> None:
    count = reg.overflow
    reg.overflow_reported = count
    rec = reg.recorder
    if rec is None:
        return
    rec.record(
        "log",
        None,
        logging.WARNING,
        f"in-flight registry full ({reg.maxsize} entries): {count} requests or jobs were "
        "not tracked, so they are not watched for hangs",
        {"overflow": count},
        logger="flask_diaglog.watchdog",
    )


def entries(registry: InFlight, stacks: bool = False) -> list[dict[str, Any]]:
    """The in-flight work of one registry, oldest first (see ``flask_diaglog.inflight``)."""
    items = registry.items()
    if not items:
        return []
    names = thread_names()
    frames = thread_frames() if stacks else {}
    pid = os.getpid()
    rec = registry.recorder
    out: list[dict[str, Any]] = []
    for t, name in items:
        entry: dict[str, Any] = {
            "kind": t.kind,
            "request_id": t.request_id,
            "job_id": url_job_id(t),
            "name": name,
            "method": t.method,
            "path": t.path,
            "start": t.start,
            "elapsed_ms": round(t.elapsed_ms(), 3),
            "stage": t.current_stage,
            "stages": dict(t.stage_totals()),  # a copy: callers may change it
            "thread": names.get(t.thread),
            "thread_id": t.thread,
            "hung": t.hung,
            "pid": pid,
            "progress": _progress(t),
        }
        if stacks:
            text = format_stack(frames.get(t.thread), t.thread, names)
            entry["stack"] = rec.redact(text) if rec is not None else text
        out.append(entry)
    out.sort(key=lambda e: e["start"])
    return out


def _progress(trace: Trace) -> dict[str, Any] | None:
    p = trace.progress
    return {"fraction": p[0], "message": p[1]} if p is not None else None


def all_entries(stacks: bool = False) -> list[dict[str, Any]]:
    """The in-flight work of every registry in this process, oldest first."""
    out: list[dict[str, Any]] = []
    for reg in list(_watchdog.registries):
        out.extend(entries(reg, stacks))
    out.sort(key=lambda e: e["start"])
    return out
