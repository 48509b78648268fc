"""The two line layouts, plain and JSON: rendering a record's parts to bytes, and splitting a line
back into its parts.

A renderer takes the parts of a record, not an object, so the recorder never builds one just to
write a line::

    render(ts, level, kind, logger, request_id, job_id, msg, fields, exc, thread) -> bytes

Plain: ``2026-11-22 10:15:02.123 | INFO | <logger> | req=<id> job=<id or -> | <message>``.
JSON: one object per line with the documented keys; keys without a value are left out.

Every character that a common reader takes as a line break or a terminal control (C0, DEL, C1
with NEL, U+2028, U+2029) is escaped in every field of both layouts, so one record is always one
line. What the message text says is :mod:`flask_diaglog.trail`'s business.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from ..trail import FIELDS, FLOAT_DIGITS, HOST, LEVEL_NAMES, Fields

if TYPE_CHECKING:
    from ..record import Event

__all__ = [
    "PLAIN_LAYOUT",
    "RENDERERS",
    "Renderer",
    "format_ts",
    "json_line",
    "plain_line",
    "split_json",
    "split_plain",
]

#: ``render(ts, level, kind, logger, request_id, job_id, msg, fields, exc, thread) -> bytes``
Renderer = Callable[
    [
        float,
        int,
        str,
        str,
        "str | None",
        "str | None",
        str,
        "Fields | None",
        "str | None",
        "str | None",
    ],
    bytes,
]


class _Second(NamedTuple):
    """The parts of a timestamp that change once per second, formatted once per second."""

    sec: int
    plain: str  # 2026-11-22 10:15:02
    iso: str  # 2026-11-22T10:15:02
    offset: str  # +01:00


def _second(sec: int) -> _Second:
    lt = time.localtime(sec)
    off = lt.tm_gmtoff or 0
    sign = "+" if off >= 0 else "-"
    off = abs(off)
    s = _Second(
        sec,
        time.strftime("%Y-%m-%d %H:%M:%S", lt),
        time.strftime("%Y-%m-%dT%H:%M:%S", lt),
        f"{sign}{off // 3600:02d}:{(off % 3600) // 60:02d}",
    )
    global _now
    _now = s  # one reference swap: other threads see the old or the new tuple, never a mix
    return s


_now = _second(int(time.time()))
#: ".000" to ".999": the millisecond part without a format call per line.
_MS = tuple(f".{i:03d}" for i in range(1000))
_LEVEL_TAG = {no: f" | {name} | " for no, name in LEVEL_NAMES.items()}

#: Line breaks and terminal controls for every reader (``str.splitlines``, text-mode ``io``,
#: ``grep``, ``less``): C0, DEL, C1 (NEL included), U+2028 and U+2029.
_BREAKERS = (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029)
#: ``str.translate`` table of every character a plain line escapes (line breaks, terminal
#: controls); readers use it to make text from JSON lines safe for a terminal.
ESCAPES: dict[int, str] = {c: f"\\x{c:02x}" for c in _BREAKERS if c < 0x100}
_ESCAPES = ESCAPES
_ESCAPES.update({0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029"})
#: In JSON the same characters become ``\\u00XX`` escapes, so the value survives a JSON parser.
_JSON_ESCAPES: dict[int, str] = {c: f"\\u{c:04x}" for c in _BREAKERS}


def format_ts(ts: float) -> str:
    """ISO 8601 local time with milliseconds and offset, e.g. ``2026-11-22T10:15:02.123+00:00``."""
    sec = int(ts)
    now = _now
    if now.sec != sec:
        now = _second(sec)
    return f"{now.iso}{_MS[int((ts - sec) * 1000)]}{now.offset}"


def _encode(line: str) -> bytes:
    try:
        return line.encode()
    except UnicodeEncodeError:  # lone surrogates
        return line.encode("utf-8", "backslashreplace")


# -- plain --------------------------------------------------------------------------------------

#: The last ``(level, logger, request id, job id, " | INFO | logger | req=.. job=.. | ")``: the
#: lines of one request share it, so it is built once per request, not once per line. Replaced
#: as a whole tuple, so threads never see a mix.
_middle: tuple[int, str, str | None, str | None, str] = (-1, "", None, None, "")


def plain_line(
    ts: float,
    level: int,
    kind: str,
    logger: str,
    rid: str | None,
    jid: str | None,
    msg: str,
    fields: Fields | None = None,
    exc: str | None = None,
    thread: str | None = None,
) -> bytes:
    """``2026-11-22 10:15:02.123 | INFO | logger | req=<id> job=<id or -> | message``.

    ``kind``, ``fields`` and ``thread`` are not part of the plain layout (the message says what
    the kind's fields are, see :mod:`flask_diaglog.trail`). A traceback follows ``" | "``.
    """
    global _middle
    sec = int(ts)
    now = _now
    if now.sec != sec:
        now = _second(sec)
    m = _middle
    if m[2] is rid and m[3] is jid and m[1] is logger and m[0] == level:
        middle = m[4]
    else:
        tag = _LEVEL_TAG.get(level) or f" | Level {level} | "
        middle = f"{tag}{logger} | req={rid or '-'} job={jid or '-'} | "
        if not middle.isprintable():  # ids are validated; a logger name may be anything
            middle = middle.translate(_ESCAPES)
        _middle = (level, logger, rid, jid, middle)
    if exc:
        msg = f"{msg} | {exc}"
    if not msg.isprintable():
        msg = msg.translate(_ESCAPES)
    # The timestamp parts and the middle are printable by construction: only msg is checked.
    return _encode(f"{now.plain}{_MS[int((ts - sec) * 1000)]}{middle}{msg}\n")


#: The plain layout, read back: the inverse of :func:`plain_line`.
PLAIN_LAYOUT = re.compile(
    r"(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) \| (?P<level>[A-Z]+|Level \d+) \| "
    r"(?P<logger>.*?) \| req=(?P<req>\S+) job=(?P<job>\S+) \| (?P<msg>.*)"
)


def split_plain(line: str) -> dict[str, str] | None:
    """The parts of a plain line (``ts``, ``level``, ``logger``, ``req``, ``job``, ``msg``), or
    ``None`` when it is not one."""
    m = PLAIN_LAYOUT.fullmatch(line)
    return m.groupdict() if m is not None else None


# -- JSON ---------------------------------------------------------------------------------------

_enc: Callable[[str], str] = json.encoder.encode_basestring
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode
_pid = os.getpid()
#: The host name, JSON-encoded: which machine wrote a line, when files of several are merged.
_HOST = json.dumps(HOST)
_current_thread = threading.current_thread
_isfinite = math.isfinite


def _refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_refresh_pid)


def _value(v: Any) -> str:
    t = type(v)
    if t is str:
        return _enc(v)
    if t is bool:
        return "true" if v else "false"
    if t is int:
        return int.__repr__(v)
    if t is float and _isfinite(v):
        return float.__repr__(round(v, FLOAT_DIGITS))  # durations: microseconds are enough
    return _dumps(v)


def json_line(
    ts: float,
    level: int,
    kind: str,
    logger: str,
    rid: str | None,
    jid: str | None,
    msg: str,
    fields: Fields | None = None,
    exc: str | None = None,
    thread: str | None = None,
) -> bytes:
    """One JSON object: ``ts``, ``level``, ``event``, ``logger``, ``msg``, ``request_id``,
    ``job_id``, the kind's fields, ``pid``, ``host``, ``thread``, ``exc``; keys without a value
    left out.

    Built as text from the parts (the constant keys need no encoder), so a JSON line costs about
    what a plain one does.
    """
    sec = int(ts)
    now = _now
    if now.sec != sec:
        now = _second(sec)
    name = LEVEL_NAMES.get(level) or f"Level {level}"
    line = (
        f'{{"ts":"{now.iso}{_MS[int((ts - sec) * 1000)]}{now.offset}","level":"{name}",'
        f'"event":{_enc(kind)},"logger":{_enc(logger)},"msg":{_enc(msg)}'
    )
    if rid is not None:
        line += f',"request_id":{_enc(rid)}'
    if jid is not None:
        line += f',"job_id":{_enc(jid)}'
    if fields:
        items = zip(FIELDS[kind], fields, strict=False) if type(fields) is tuple else fields.items()  # type: ignore[union-attr]
        for k, v in items:
            if v is not None:
                line += f",{_enc(k)}:{_value(v)}"
    if thread is None:
        thread = _current_thread().name
    line += f',"pid":{_pid},"host":{_HOST},"thread":{_enc(thread)}'
    if exc:
        line += f',"exc":{_enc(exc)}'
    if not line.isprintable():  # encode_basestring escapes C0; C1, U+2028 and U+2029 remain
        line = line.translate(_JSON_ESCAPES)
    return _encode(line + "}\n")


def split_json(line: str) -> dict[str, Any] | None:
    """The object of a JSON line, or ``None`` when it is not one."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


RENDERERS: dict[str, Renderer] = {"plain": plain_line, "json": json_line}


def render_event(render: Renderer, ev: Event) -> bytes:
    """The line of an event, as ``render`` writes it (the console and test captures)."""
    return render(
        ev.ts, ev.level, ev.kind, ev.logger, ev.request_id, ev.job_id, ev.msg,
        ev.fields, ev.exc, ev.thread,
    )  # fmt: skip
