"""The dashboard's query parameters: each one parsed and checked once, for the pages and the API.

An invalid value raises :class:`InvalidParameter`, which the blueprint answers with a 400
problem+json naming the parameter. Times (``since``, ``until``) are ISO 8601 (local time when
no offset is given; any year from 1 to 9999), finite epoch seconds, or a span before now:
``30s``, ``15m``, ``2h``, ``7d``. A route is ``METHOD /rule`` in any case and spacing, or the rule
alone.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any

from ..context import is_valid_id
from ..trail import LEVELS

__all__ = [
    "Filters", "InvalidParameter", "parse_filters", "parse_id", "parse_int", "parse_route",
    "parse_time",
]  # fmt: skip

#: Rows per page of the list (``per_page`` may ask for 1 to 500).
PER_PAGE = 50
_STATUS = re.compile(r"[1-5](?:xx|\d\d)")
_METHOD = re.compile(r"[A-Z]{1,16}")
_SPAN = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_SPAN_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_KINDS = ("request", "job")
#: The longest route or search text accepted.
MAX_TEXT = 512


class InvalidParameter(ValueError):
    """A query parameter (or path part) that cannot be used; ``parameter`` names it."""

    def __init__(self, parameter: str, detail: str) -> None:
        super().__init__(detail)
        self.parameter = parameter
        self.detail = detail


def parse_time(value: str, name: str, now: float | None = None) -> float:
    """Epoch seconds of ``value`` (see the module docstring)."""
    text = value.strip()
    m = _SPAN.fullmatch(text)
    if m is not None:
        return (time.time() if now is None else now) - float(m[1]) * _SPAN_SECONDS[m[2]]
    try:
        seconds = float(text)
        if math.isfinite(seconds):
            return seconds
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidParameter(
            name,
            f"{name!r} must be an ISO 8601 time (2026-11-30T10:15), epoch seconds, or a span "
            "before now such as 15m, 2h or 7d.",
        ) from None
    try:
        return when.timestamp()
    except (ValueError, OverflowError):  # a local time in year 1 or 9999: out of mktime's range
        return when.replace(tzinfo=timezone.utc).timestamp()  # hours off, 2000 years away


def parse_route(value: str) -> str:
    """A route as the index names it: ``get  /a/<id>`` is ``GET /a/<id>``; a rule alone (or
    ``(no route)``) stays as it is."""
    parts = value.split(None, 1)
    if len(parts) == 2 and _METHOD.fullmatch(parts[0].upper()):
        return f"{parts[0].upper()} {parts[1].strip()}"
    return value.strip()


def parse_id(value: str, name: str = "id") -> str:
    """A request or job id, checked like every id diaglog accepts."""
    if not is_valid_id(value):
        raise InvalidParameter(
            name, f"{name!r} must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_', ':' or '-'."
        )
    return value


def parse_int(args: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """Whole number ``name`` of ``args`` from ``low`` to ``high``; ``default`` when absent."""
    text = args.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidParameter(name, f"{name!r} must be a whole number from {low} to {high}.")
    return value


@dataclass(frozen=True)
class Filters:
    """What the list shows: every field is one query parameter of the same name."""

    status: str | None = None
    method: str | None = None
    route: str | None = None
    min_ms: float | None = None
    level: str | None = None
    job_id: str | None = None
    request_id: str | None = None
    q: str | None = None
    since: str | None = None
    until: str | None = None
    kind: str | None = None
    page: int = 1
    per_page: int = PER_PAGE

    def params(self, **changes: Any) -> dict[str, str]:
        """The query parameters of these filters (with ``changes``), defaults left out."""
        out = {}
        for k, v in asdict(replace(self, **changes)).items():
            if v is None or (k == "page" and v == 1) or (k == "per_page" and v == PER_PAGE):
                continue
            out[k] = f"{v:g}" if isinstance(v, float) else str(v)
        return out

    @property
    def active(self) -> bool:
        """Whether any filter (not just paging) is set."""
        return bool(self.params(page=1, per_page=PER_PAGE))


def parse_filters(args: Mapping[str, str], now: float | None = None) -> Filters:
    """The filters of a request's query string; :class:`InvalidParameter` for a bad value."""

    def text(name: str) -> str | None:
        value = args.get(name)
        if value is None or value.strip() == "":
            return None
        if len(value) > MAX_TEXT:
            raise InvalidParameter(name, f"{name!r} is longer than {MAX_TEXT} characters.")
        return value.strip()

    status = text("status")
    if status is not None:
        status = status.lower()
        if not _STATUS.fullmatch(status):
            raise InvalidParameter("status", "'status' must be a class such as 5xx, or a code.")
    method = text("method")
    if method is not None:
        method = method.upper()
        if not _METHOD.fullmatch(method):
            raise InvalidParameter("method", "'method' must be an HTTP method such as GET.")
    min_ms: float | None = None
    raw = text("min_ms")
    if raw is not None:
        try:
            min_ms = float(raw)
        except ValueError:
            min_ms = -1.0
        if not 0 <= min_ms < float("inf"):
            raise InvalidParameter("min_ms", "'min_ms' must be a number of milliseconds >= 0.")
    level = text("level")
    if level is not None:
        level = level.upper()
        if level not in LEVELS:
            raise InvalidParameter("level", f"'level' must be one of {', '.join(LEVELS)}.")
    kind = text("kind")
    if kind is not None and kind not in _KINDS:
        raise InvalidParameter("kind", "'kind' must be 'request' or 'job'.")
    route = text("route")
    job_id, request_id = text("job_id"), text("request_id")
    since, until = text("since"), text("until")
    for name, value in (("since", since), ("until", until)):
        if value is not None:
            parse_time(value, name, now)
    return Filters(
        status=status,
        method=method,
        route=parse_route(route) if route else None,
        min_ms=min_ms,
        level=level,
        job_id=parse_id(job_id, "job_id") if job_id else None,
        request_id=parse_id(request_id, "request_id") if request_id else None,
        q=text("q"),
        since=since,
        until=until,
        kind=kind,
        page=parse_int(args, "page", 1, 1, 1_000_000),
        per_page=parse_int(args, "per_page", PER_PAGE, 1, 500),
    )
