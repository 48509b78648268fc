"""Shared helpers: interleaved rounds, medians, table printing."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import statistics
import subprocess
from collections.abc import Callable, Sequence
from typing import Any


def interleave(
    variants: dict[str, Callable[[], float]], rounds: int, *, warmup: int = 1
) -> dict[str, list[float]]:
    """Run each variant once per round, rotating the order each round. Returns the samples."""
    names = list(variants)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            gc.collect()
            value = variants[name]()
            if r >= warmup:
                samples[name].append(value)
    return samples


def stop_process_group(proc: subprocess.Popen[Any]) -> None:
    """Stop a server started with ``start_new_session=True`` (gunicorn and its workers): SIGTERM
    to the group, 15 s to exit, then SIGKILL. Also used by the tests' server helpers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    """The interquartile range as a percentage of the median (how noisy a row was)."""
    if len(values) < 4:
        return "-"
    q = statistics.quantiles(values, n=4)
    m = statistics.median(values)
    return f"±{(q[2] - q[0]) / 2 / m * 100:.0f}%"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (pasted as is into the README's Performance section)."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    ]
    return "\n".join([line, sep, *body])
