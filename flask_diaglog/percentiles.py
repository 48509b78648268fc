"""Count, errors, total, max and percentiles of durations in bounded memory: :class:`Stats`,
what ``flask diaglog summary`` (:func:`flask_diaglog.logread.summarize`) keeps per route, stage
and job."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["EXACT", "Stats"]

#: Values a :class:`Stats` keeps exactly before it folds them into its sketch.
EXACT = 1024
_GAMMA = 1.02  # bucket growth: any percentile is within 1% of a value that was seen
_LOG_GAMMA = math.log(_GAMMA)
_MIN_MS = 0.001


class Stats:
    """Count, errors, total, max and percentiles of durations (ms) in bounded memory: exact for
    :data:`EXACT` values, then a log-bucket sketch with 1% relative error."""

    __slots__ = ("_buckets", "_values", "count", "errors", "max", "total")

    def __init__(self) -> None:
        self.count = self.errors = 0
        self.total = self.max = 0.0
        self._values: list[float] | None = []
        self._buckets: dict[int, int] = {}

    def add(self, ms: float, error: bool = False) -> None:
        self.count += 1
        self.errors += error
        self.total += ms
        self.max = max(self.max, ms)
        if self._values is not None:
            self._values.append(ms)
            if len(self._values) <= EXACT:
                return
            values, self._values = self._values, None
        else:
            values = [ms]
        for v in values:
            i = math.ceil(math.log(max(v, _MIN_MS)) / _LOG_GAMMA)
            self._buckets[i] = self._buckets.get(i, 0) + 1

    def quantile(self, q: float) -> float:
        """The value at quantile ``q`` (0..1), nearest rank; 0.0 when empty."""
        if not self.count:
            return 0.0
        rank = round(q * (self.count - 1))
        if self._values is not None:
            return sorted(self._values)[rank]
        seen = 0
        for i in sorted(self._buckets):
            seen += self._buckets[i]
            if seen > rank:
                return min(self.max, 2 * _GAMMA**i / (_GAMMA + 1))
        return self.max

    def to_dict(self) -> dict[str, Any]:
        """``count``, ``errors``, ``error_rate``, ``total_ms``, ``p50_ms``, ``p95_ms``,
        ``p99_ms``, ``max_ms`` (ms rounded to 2 places)."""
        rate = round(self.errors / self.count, 4) if self.count else 0.0
        out = {"count": self.count, "errors": self.errors, "error_rate": rate}
        out.update({f"p{q}_ms": round(self.quantile(q / 100), 2) for q in (50, 95, 99)})
        return {**out, "max_ms": round(self.max, 2), "total_ms": round(self.total, 2)}
