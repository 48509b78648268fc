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
from typing import TYPE_CHECKING, Any

from ..escapes import ESCAPES, JSON_ESCAPES, shown
from ..lifecycle import at_fork
from ..trail import FIELDS, FLOAT_DIGITS, HOST, LEVEL_NAMES, Fields, format_float

if TYPE_CHECKING:
    from ..record import Event

__all__ = [
    "PLAIN_LAYOUT",
    "RENDERERS",
    "Renderer",
    "follow_forks",
    "json_line",
    "plain_line",
    "printable_variant",
    "split_json",
    "split_plain",
]

#: ``render(ts, level, kind, logger, request_id, job_id, msg, fields, exc, thread) -> bytes``
Renderer = Callable[
    [float, int, str, str, "str | None", "str | None", str, "Fields | None", "str | None",
     "str | None"],
    bytes,
]  # fmt: skip


#: The parts of a timestamp that change once per second, read by index (a named tuple's
#: attribute is a descriptor LOAD_ATTR does not specialize: 0.5 k instructions more a line):
#:
#: * ``[0]``: the second's start, a float: ``ts`` is in it when ``0 <= ts - [0] < 1`` (exact but
#:   in the second before 1970, which is then made anew): no int() call (-1.3 k a line);
#: * ``[1]`` ``'{"ts":"2026-11-22T10:15:02'`` (the start of a JSON line), ``[2]`` ``"+01:00"``,
#:   ``[3]`` ``"2026-11-22 10:15:02"``, ``[4]`` ``"2026-11-22T10:15:02"``;
#: * ``[5:]``: what the next second of the same local minute is built from: the minute, the UTC
#:   offset in seconds, ``"2026-11-22 10:15:"`` and ``"2026-11-22T10:15:"``.
_Second = tuple[float, str, str, str, str, "int | None", int, str, str]
#: ``+01:00`` by UTC offset in seconds (a handful of values in a process's life).
_offsets: dict[int, str] = {}
#: ``"00"`` to ``"59"``.
_SS = tuple(f"{i:02d}" for i in range(60))
_floor = math.floor


def _second(ts: float) -> _Second:
    """The timestamp parts of the second ``ts`` is in, made the current ones."""
    global _now
    sec = _floor(ts)  # not int(): a timestamp before 1970 is in the second below it
    now = _now
    off = now[6]
    minute = (sec + off) // 60
    if minute == now[5]:
        # Another second of the same local minute: only the seconds change (1 k instructions
        # instead of 13 k for localtime and strftime). Under callgrind, which runs the program
        # about 50 times slower, a new second comes every few dozen requests.
        ss = _SS[(sec + off) % 60]
        plain, iso, offset = f"{now[7]}{ss}", f"{now[8]}{ss}", now[2]
    else:  # a new minute (or the clock moved): the UTC offset may have changed too
        lt = time.localtime(sec)
        plain = time.strftime("%Y-%m-%d %H:%M:%S", lt)
        iso = f"{plain[:10]}T{plain[11:]}"
        off = lt.tm_gmtoff or 0
        minute = (sec + off) // 60
        cached = _offsets.get(off)
        if cached is None:
            sign = "+" if off >= 0 else "-"
            a = abs(off)
            cached = f"{sign}{a // 3600:02d}:{(a % 3600) // 60:02d}"
            if len(_offsets) < 64:
                _offsets[off] = cached
        offset = cached
    start, json_ts = float(sec), f'{{"ts":"{iso}'
    s: _Second = (start, json_ts, offset, plain, iso, minute, off, plain[:17], iso[:17])
    _now = s  # one reference swap: other threads see the old or the new tuple, never a mix
    return s


#: At first no second: no timestamp is within it.
_now: _Second = (math.inf, "", "", "", "", None, 0, "", "")
#: ".000" to ".999": the millisecond part without a format call per line; and ".999" once more
#: for a timestamp so close below a whole second that ``(ts - second) * 1000`` rounds to 1000.
_MS = (*(f".{i:03d}" for i in range(1000)), ".999")
_LEVEL_TAG = {no: f" | {name} | " for no, name in LEVEL_NAMES.items()}


# -- plain --------------------------------------------------------------------------------------

#: ``" | INFO | <logger>"`` by logger, then level, escaped. Replaced as a whole on a miss (copy on
#: write), never mutated, so a thread sees the old or the new dict; bounded, since a logger name
#: may be anything.
_heads: dict[str, dict[int, str]] = {}
#: The last ``(request id, job id, " | req=<id> job=<id or -> | ")``: all lines of a request
#: (whatever their logger) share it, so it is built once per request. Replaced as a whole tuple.
_ids: tuple[str | None, str | None, str] = (None, None, " | req=- job=- | ")
_CACHE_MAX = 256


def _head(level: int, logger: str) -> str:
    """``" | INFO | <logger>"`` (escaped), cached in :data:`_heads`."""
    global _heads
    head = shown(f"{(_LEVEL_TAG.get(level) or f' | Level {level} | ')}{logger}")  # any logger
    heads = _heads if len(_heads) < _CACHE_MAX else {}
    _heads = {**heads, logger: {**heads.get(logger, {}), level: head}}
    return head


def _plain_ids(rid: str | None, jid: str | None) -> str:
    """``" | req=<id> job=<id or -> | "`` (escaped), kept in :data:`_ids`."""
    global _ids
    ids = f" | req={rid or '-'} job={jid or '-'} | "
    if not ids.isprintable():  # ids are validated; kept safe all the same
        ids = ids.translate(ESCAPES)
    _ids = (rid, jid, ids)
    return ids


def _plain(check: bool) -> Renderer:
    """The plain renderer; with ``check=False`` it takes the message as holding no character it
    escapes (one code for both: ``check`` is the closure's, read as cheaply as an argument)."""

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

        ``kind``, ``fields`` and ``thread`` are not part of the plain layout (the message says
        what the kind's fields are, see :mod:`flask_diaglog.trail`). A traceback follows
        ``" | "``.
        """
        now = _now
        d = ts - now[0]  # see _Second
        if not 0.0 <= d < 1.0:
            now = _second(ts)
            d = ts - now[0]
        try:
            head = _heads[logger][level]
        except KeyError:
            head = _head(level, logger)
        m = _ids
        ids = m[2] if m[0] is rid and m[1] is jid else _plain_ids(rid, jid)
        if exc:
            msg = f"{msg} | {exc}"
            if not msg.isprintable():
                msg = msg.translate(ESCAPES)
        elif check and not msg.isprintable():
            msg = msg.translate(ESCAPES)
        # The timestamp parts, the head and the ids are printable by construction: only msg is
        # checked. Escaping parts one by one gives the same text as escaping the whole line,
        # since str.translate maps each character on its own.
        line = f"{now[3]}{_MS[_floor(d * 1000)]}{head}{ids}{msg}\n"
        try:  # inline, not a helper: saves a call per line
            return line.encode()
        except UnicodeEncodeError:  # lone surrogates
            return line.encode("utf-8", "backslashreplace")

    return plain_line


#: The plain renderer: ``plain_line(ts, level, kind, logger, rid, jid, msg, fields, exc, thread)``.
plain_line = _plain(True)
_plain_printable = _plain(False)


def printable_variant(render: Renderer) -> Renderer:
    """``render`` for the kinds whose messages hold no character a line escapes, as built
    (:data:`.trail.PRINTABLE`): the plain one skips its check (0.6 k instructions a stage)."""
    return _plain_printable if render is plain_line else render


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
_pid: int | None = None  # from the first recorder on (follow_forks)
#: The host name, JSON-encoded: which machine wrote a line, when files of several are merged.
_HOST = json.dumps(HOST)
_current_thread = threading.current_thread
_isfinite = math.isfinite


#: Floats are written rounded to FLOAT_DIGITS decimals, as ``repr(round(v, FLOAT_DIGITS))``
#: writes them. Below this magnitude such a number has at most 15 significant digits, so the
#: fixed-point text with its trailing zeros cut is exactly that text (checked on 2 million values,
#: halves included), at 40 % of the cost: round() and the shortest-repr search cost 4.2 k
#: instructions a float.
_FIXED_MAX = 1e12
_FIXED_MIN = -_FIXED_MAX  # the fast paths' bound: not negated at each line
_FLOAT_SPEC = f".{FLOAT_DIGITS}f"


def _float(v: float) -> str:
    """A finite float as JSON lines write it: ``repr(round(v, FLOAT_DIGITS))``."""
    if -_FIXED_MAX < v < _FIXED_MAX:
        text = format_float(v, _FLOAT_SPEC).rstrip("0")
        return text + "0" if text[-1] == "." else text
    return float.__repr__(round(v, FLOAT_DIGITS))


def _value(v: Any) -> str:
    t = type(v)
    if t is str:
        return _enc(v)
    if t is bool:
        return "true" if v else "false"
    if t is int:
        return int.__repr__(v)
    if t is float and _isfinite(v):
        return _float(v)  # durations: microseconds are enough
    return _dumps(v)


#: The ``,"key":`` fragments of the kinds whose fields come as a tuple (:data:`FIELDS`).
_JSON_KEYS = {kind: tuple(f",{_enc(k)}:" for k in keys) for kind, keys in FIELDS.items()}
#: ``","level":"INFO","event":<kind>,"logger":<logger>,"msg":`` by kind, logger, then level;
#: copy on write, as :data:`_heads`.
_json_heads: dict[str, dict[str, dict[int, str]]] = {}
#: The last ``(request id, job id, ',"request_id":..,"job_id":..')``, as :data:`_ids`.
_json_ids: tuple[str | None, str | None, str] = (None, None, "")
#: The last ``(key, thread name, ',"pid":..,"host":..,"thread":..')``; emptied at a fork. The key
#: is the thread whose ``_name`` that name was (a class of :data:`_PLAIN_THREADS`), or else the
#: name itself (given, or asked of the thread); at first a key nothing else is.
_tail: tuple[object, str | None, str] = (object(), None, "")
#: Thread classes whose ``name`` is :class:`threading.Thread`'s: for them ``_name`` is the name.
_PLAIN_THREADS = frozenset(
    c
    for c in vars(threading).values()
    if isinstance(c, type) and issubclass(c, threading.Thread) and c.name is threading.Thread.name
)


def follow_forks() -> None:
    """Take this process's id for JSON lines, and keep it right in forked children: once, by
    the first recorder (or JSON line), not at import."""
    if _pid is None:
        at_fork(after_in_child=_refresh_pid)
        _refresh_pid()


def _refresh_pid() -> None:
    global _pid, _tail
    _pid = os.getpid()
    _tail = (object(), None, "")


def _json_head(level: int, kind: str, logger: str) -> str:
    global _json_heads
    name = LEVEL_NAMES.get(level) or f"Level {level}"
    head = f'","level":"{name}","event":{_enc(kind)},"logger":{_enc(logger)},"msg":'
    if not head.isprintable():
        head = head.translate(JSON_ESCAPES)
    heads = _json_heads if len(_json_heads) < _CACHE_MAX else {}
    by_logger = heads.get(kind, {})
    by_level = {**by_logger.get(logger, {}), level: head}
    _json_heads = {**heads, kind: {**by_logger, logger: by_level}}
    return head


def _json_ids_of(rid: str | None, jid: str | None) -> str:
    global _json_ids
    ids = ""
    if rid is not None:
        ids = f',"request_id":{_enc(rid)}'
    if jid is not None:
        ids += f',"job_id":{_enc(jid)}'
    # JSON-encoded values, like the message: json_line's check of the whole line escapes what
    # encode_basestring leaves (ids are validated anyway), so no isprintable here (-1 k
    # instructions a request, callgrind).
    _json_ids = (rid, jid, ids)
    return ids


def _json_tail(key: object, thread: str) -> str:
    global _tail
    if _pid is None:
        follow_forks()
    tail = f',"pid":{_pid},"host":{_HOST},"thread":{_enc(thread)}'
    if not tail.isprintable():
        tail = tail.translate(JSON_ESCAPES)
    _tail = (key, thread, tail)
    return tail


def _json_thread_tail(th: threading.Thread | None) -> str:
    """The tail of a line written by ``th``, this thread's entry in ``threading._active``."""
    if type(th) in _PLAIN_THREADS:
        return _json_tail(th, th._name)  # type: ignore[union-attr]
    # A subclass with its own name, or a thread threading did not start (not yet in _active).
    name = _current_thread().name
    last = _tail
    return last[2] if last[0] is name else _json_tail(name, name)


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
    now = _now
    d = ts - now[0]  # as in plain_line
    if not 0.0 <= d < 1.0:
        now = _second(ts)
        d = ts - now[0]
    ts_ms = _MS[_floor(d * 1000)]
    try:
        head = _json_heads[kind][logger][level]
    except KeyError:
        head = _json_head(level, kind, logger)
    m = _json_ids
    ids = m[2] if m[0] is rid and m[1] is jid else _json_ids_of(rid, jid)
    last = _tail
    if thread is None:
        # What threading.current_thread().name returns, without its two Python calls
        # (-0.45 k instructions a line). Looked up on the module at each call, as
        # current_thread() does, so a later monkey patch (gevent) is followed. The cache is
        # keyed on the thread and its _name as of this line (a renamed thread misses), so the
        # thread's class is checked only on a miss (-0.2 k instructions a line).
        th = threading._active.get(threading.get_ident())  # type: ignore[attr-defined]
        tail = last[2] if last[0] is th and last[1] is th._name else _json_thread_tail(th)  # type: ignore[attr-defined]
    else:
        tail = last[2] if last[0] is thread else _json_tail(thread, thread)
    if exc:
        tail = f'{tail},"exc":{_enc(exc)}'
    text = _enc(msg)
    # Each line is built by one f-string, not head, fields and tail one after the other: every
    # f-string copies the whole line again (-0.8 k instructions a line).
    line: str | None = None
    if type(fields) is tuple:
        # The lines of every request, with the values of every request (strings, no query or
        # content type, a finite float), as one f-string: the loop below costs about 1.5 k
        # instructions a field (16 k per request, callgrind). Anything else takes the loop, which
        # writes the same text (tests/test_render_fast.py).
        # One try a kind: a tuple of another length leaves at its unpacking's ValueError, with
        # no len() and compare before (-0.3 k instructions a line); a value that is not a str,
        # at encode_basestring's TypeError (it takes a str or a subclass, encoded as the loop's
        # _dumps does): the try costs nothing in 3.11, a type check about 0.15 k a value.
        if kind == "request_end":
            try:
                method, path, route, status, ms = fields
                if type(status) is int and type(ms) is float and _FIXED_MIN < ms < _FIXED_MAX:
                    # _float inline: the range is checked above (-0.6 k instructions a line)
                    ms_text = format_float(ms, _FLOAT_SPEC).rstrip("0")
                    if ms_text[-1] == ".":
                        ms_text += "0"
                    route_part = "" if route is None else f',"route":{_enc(route)}'
                    line = (
                        f"{now[1]}{ts_ms}{now[2]}{head}{text}{ids}"
                        f',"method":{_enc(method)},"path":{_enc(path)}{route_part}'
                        f',"status":{status},"duration_ms":{ms_text}{tail}}}\n'
                    )
            except (ValueError, TypeError):
                pass
        elif kind == "request_start":
            try:
                method, path, query, client, ctype, testing = fields
                if query is None and ctype is None and type(testing) is bool:
                    line = (
                        f"{now[1]}{ts_ms}{now[2]}{head}{text}{ids}"
                        f',"method":{_enc(method)},"path":{_enc(path)},"client":{_enc(client)}'
                        f',"testing":{"true" if testing else "false"}{tail}}}\n'
                    )
            except (ValueError, TypeError):
                pass
        elif kind == "stage":
            try:
                name, ms, ok = fields
                if type(ms) is float and _FIXED_MIN < ms < _FIXED_MAX:
                    ok_text = "true" if ok is True else "false" if ok is False else None
                    if ok_text is not None:
                        ms_text = format_float(ms, _FLOAT_SPEC).rstrip("0")
                        if ms_text[-1] == ".":
                            ms_text += "0"
                        line = (
                            f'{now[1]}{ts_ms}{now[2]}{head}{text}{ids},"stage":{_enc(name)}'
                            f',"duration_ms":{ms_text},"ok":{ok_text}{tail}}}\n'
                        )
            except (ValueError, TypeError):
                pass
    if line is None:
        line = f"{now[1]}{ts_ms}{now[2]}{head}{text}{ids}"
        if fields:
            if type(fields) is tuple:
                # zip() without strict=False: the keyword costs 1.5 k instructions.
                for key, v in zip(_JSON_KEYS[kind], fields):  # noqa: B905
                    if v is not None:
                        line = f"{line}{key}{_value(v)}"
            else:
                for k, v in fields.items():  # type: ignore[union-attr]
                    if v is not None:
                        line += f",{_enc(k)}:{_value(v)}"
        line = f"{line}{tail}}}\n"
    # Only the JSON-encoded values can hold a line break or a terminal control (the other parts
    # are escaped when cached), and encode_basestring escapes C0: an ASCII line can only hold
    # DEL, found by a fast search instead of isprintable over the whole line (-8 k instructions
    # a line). The "}\n" at the end is left as it is.
    if line.isascii():
        if "\x7f" in line:
            line = line[:-2].translate(JSON_ESCAPES) + "}\n"
    elif not line[:-2].isprintable():
        line = line[:-2].translate(JSON_ESCAPES) + "}\n"
    try:  # inline, not a helper: saves a call per line
        return line.encode()
    except UnicodeEncodeError:  # lone surrogates (a non-ASCII line): see _json_surrogate
        return _SURROGATE.sub(_json_surrogate, line).encode()


#: A lone surrogate: text from undecodable bytes (``surrogateescape``) or a JSON escape.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _json_surrogate(m: re.Match[str]) -> str:
    r"""A lone surrogate (only ever in a string) as the text ``\udXXX`` (escaped ``\\udXXX``),
    as plain lines show it: not a JSON escape, which gives every JSON reader it back."""
    return f"\\\\u{ord(m[0]):04x}"


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
