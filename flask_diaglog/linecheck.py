"""What a line read back must be for its readers to trust it: a time they can show, and known
fields of the types diaglog writes.

:func:`flask_diaglog.logread.parse_line` (the one place lines are read, for the CLI and the
dashboard) calls :func:`line_time` and :func:`well_formed`; a line that fails is skipped and
counted like any other line that is not a diaglog line. So a well-formed JSON object with a
wrong-typed field (``"ts": 5``, ``"hung": "x"``, ``"request_id": [1]``, ``"duration_ms": NaN``,
``"stages": {"a": null}``) can never reach the statistics, the index or a page. Unknown keys (an
app's own job fields) are not checked.

Text read back never holds a lone surrogate (a JSON line's ``\\ud800`` escape, as older JSON
lines wrote one): :func:`unsurrogate` makes it the text ``\\ud800``, as the plain layout shows it,
so no reader can fail to print or encode it, or print a raw byte for it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeGuard

__all__ = [
    "MAX_MS", "MAX_TS", "finite_number", "line_time", "unsurrogate", "well_formed",
    "without_surrogates",
]  # fmt: skip

#: Times from 1970 until a day before the year 10000: what :mod:`datetime` can show in any time
#: zone. A line outside is read as a line without a time (``0.0``).
MAX_TS = 253_402_214_400.0
#: Integers a number field may hold: any larger one is not a float.
_BIG = 1 << 1000

#: Fields that are text when present.
_TEXT = frozenset(
    {
        "ts", "request_id", "job_id", "event", "level", "logger", "msg", "exc", "host", "method",
        "path", "route", "name", "stage", "error", "reason", "message",
    }
)  # fmt: skip
#: Fields that are whole numbers when present.
_WHOLE = frozenset({"status", "hung", "pid"})
#: Fields that are finite numbers when present.
_NUMBER = frozenset({"fraction", "step", "total"})
#: The longest duration a line may carry, in ms (about 31 years): a start worked out from a
#: line's time less its duration (``1e308`` would be 10**297 years earlier) stays a time.
MAX_MS = 1e12


@functools.lru_cache(maxsize=256)
def _second(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").timestamp()  # once per second of lines


def line_time(text: str) -> float:
    """Epoch seconds of a line's time (ISO 8601, or the plain layout's); ``0.0`` when it cannot
    be read or lies outside ``0 .. MAX_TS``."""
    try:
        if "T" in text:
            ts = datetime.fromisoformat(text).timestamp()
        else:
            ts = _second(text[:19]) + int(text[20:23]) / 1000
    except (ValueError, OverflowError):
        return 0.0
    return ts if 0.0 <= ts < MAX_TS else 0.0


def finite_number(v: Any) -> TypeGuard[float]:
    """Whether ``v`` is a number a float holds: a finite float, or an int short of ``2**1000``
    (a longer one overflows any arithmetic with a float)."""
    if type(v) is float:
        return math.isfinite(v)
    return type(v) is int and -_BIG < v < _BIG


def _duration(v: Any) -> bool:
    return finite_number(v) and 0 <= v <= MAX_MS


def well_formed(data: Mapping[str, Any]) -> bool:
    """Whether every known field of a parsed line has the type diaglog writes: ids and names
    are text, ``status``, ``hung`` and ``pid`` whole numbers, progress finite numbers, durations
    (``duration_ms``, and ``stages``, an object of them) numbers from 0 to :data:`MAX_MS`."""
    for key, v in data.items():
        if key in _TEXT:
            ok = type(v) is str
        elif key in _WHOLE:
            ok = type(v) is int
        elif key in _NUMBER:
            ok = finite_number(v)
        elif key == "duration_ms":
            ok = _duration(v)
        elif key == "stages":
            ok = isinstance(v, dict) and all(
                type(k) is str and _duration(ms) for k, ms in v.items()
            )
        else:
            continue
        if not ok:
            return False
    return True


def unsurrogate(text: str) -> str:
    """``text`` with each lone surrogate as the text ``\\udXXX``, as the plain layout has it."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def without_surrogates(value: Any) -> Any:
    """``value`` (parsed JSON: objects, arrays, text, numbers) with :func:`unsurrogate` applied
    to every text in it, keys included."""
    if type(value) is str:
        return unsurrogate(value)
    if type(value) is dict:
        return {unsurrogate(k): without_surrogates(v) for k, v in value.items()}
    if type(value) is list:
        return [without_surrogates(v) for v in value]
    return value
