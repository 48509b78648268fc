"""The renderers' fast paths write what the general ones do.

* A kind's fields given as a tuple (the hot path: keys from :data:`~flask_diaglog.trail.FIELDS`,
  values formatted inline) render exactly as the same fields given as a dict (one value at a
  time), whatever the values: hostile text, ``None``, other types, non-finite floats.
* The parts cached from one line to the next (level, logger and kind; request and job ids; the
  thread name) are never stale: each line of an arbitrary interleaving reads back to its own.
* The ``thread`` of a JSON line is the name of the thread writing it, renamed or not, in a thread
  that ``threading`` did not start, and in a ``Thread`` subclass with its own ``name``.
"""

from __future__ import annotations

import _thread
import math
import re
import threading
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_diaglog.files.render import json_line, plain_line, split_json, split_plain
from flask_diaglog.trail import FIELDS

#: What no line may carry raw: C0 (but the final line feed), DEL, C1, U+2028, U+2029 and the
#: bidirectional controls.
RAW_CONTROL = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)
HOSTILE_CHARS = [
    chr(c)
    for c in (*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029, 0xD800, 0xAD, 0x202E, 0x2066)
]
TS = 1_796_016_653.1726475

text = st.lists(
    st.one_of(st.text(max_size=6), st.sampled_from([*HOSTILE_CHARS, '"', "\\", "é", "GET"])),
    max_size=5,
).map("".join)
values = st.one_of(
    st.none(),
    text,
    st.booleans(),
    st.integers(),
    st.floats(),
    st.sampled_from([0.2256810003, -0.0, 1e300, 2**80, float("inf"), float("nan")]),
    st.dictionaries(text, st.one_of(st.floats(), st.integers(), text, st.none()), max_size=3),
    st.lists(st.one_of(st.integers(), text), max_size=2),
)


@settings(max_examples=150, suppress_health_check=list(HealthCheck), deadline=None)
@given(kind=st.sampled_from(sorted(FIELDS)), data=st.data())
def test_tuple_fields_render_as_the_same_fields_in_a_dict(kind: str, data: st.DataObject) -> None:
    keys = FIELDS[kind]
    fields = data.draw(st.lists(values, max_size=len(keys)).map(tuple))
    as_dict = dict(zip(keys, fields, strict=False))
    rid = data.draw(st.one_of(st.none(), text))
    line = json_line(TS, 20, kind, "l", rid, None, "m", fields)
    assert line == json_line(TS, 20, kind, "l", rid, None, "m", as_dict)
    obj = split_json(line.decode("utf-8", "surrogateescape"))
    assert obj is not None
    assert [k for k in obj if k in keys] == [k for k, v in as_dict.items() if v is not None]
    assert not RAW_CONTROL.search(line[:-1].decode("utf-8", "backslashreplace"))


record = st.tuples(
    st.sampled_from([10, 20, 40, 25]),
    st.sampled_from(["request_start", "stage", "request_end", "other"]),
    st.one_of(st.sampled_from(["flask_diaglog.request", "flask_diaglog.stage"]), text),
    st.one_of(st.none(), st.sampled_from(["r1", "r2"]), text),
    st.one_of(st.none(), st.sampled_from(["j1"]), text),
    text,
)


def _level(no: int) -> str:
    return {10: "DEBUG", 20: "INFO", 40: "ERROR"}.get(no, f"Level {no}")


def _safe(s: str, escapes: dict[int, str]) -> str:
    """As a plain line shows ``s``: escaped, lone surrogates as ``\\udXXX``."""
    return s.translate(escapes).encode("utf-8", "backslashreplace").decode()


PLAIN_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
PLAIN_ESCAPES.update({0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029"})
PLAIN_ESCAPES.update(
    {
        c: f"\\u{c:04x}"
        for c in (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
    }
)


@settings(max_examples=150, suppress_health_check=list(HealthCheck), deadline=None)
@given(st.lists(record, min_size=2, max_size=8))
def test_each_line_of_an_interleaving_carries_its_own_parts(records: list[Any]) -> None:
    for level, kind, logger, rid, jid, msg in records * 2:
        obj = split_json(json_line(TS, level, kind, logger, rid, jid, msg).decode())
        assert obj is not None
        assert (obj["level"], obj["event"], obj["logger"], obj["msg"]) == (
            _level(level),
            kind,
            _safe(logger, {}),
            _safe(msg, {}),
        )
        shown = [None if v is None else _safe(v, {}) for v in (rid, jid)]
        assert [obj.get("request_id"), obj.get("job_id")] == shown
        parts = split_plain(plain_line(TS, level, kind, logger, rid, jid, msg).decode()[:-1])
        if parts is None:  # a hostile logger or id may break the layout; not this test's matter
            continue
        assert parts["level"] == _level(level)
        if re.fullmatch(r"[^\s|]+", _safe(logger, PLAIN_ESCAPES)):
            assert parts["logger"] == _safe(logger, PLAIN_ESCAPES)
        for key, value in (("req", rid), ("job", jid)):
            shown = _safe(value or "-", PLAIN_ESCAPES)
            if re.fullmatch(r"\S+", shown):
                assert parts[key] == shown


def _thread_of_a_line() -> str:
    obj = split_json(json_line(TS, 20, "stage", "l", "r", None, "m").decode())
    assert obj is not None
    return str(obj["thread"])


def _in_thread(target: Any, cls: type[threading.Thread] = threading.Thread) -> None:
    t = cls(target=target, name="worker\n1")
    t.start()
    t.join()


def test_the_thread_is_the_writing_threads_name_renamed_or_not() -> None:
    seen: list[tuple[str, str]] = []

    def work() -> None:
        me = threading.current_thread()
        for name in ("first", "first", "second\u2028", "first"):
            me.name = name
            seen.append((_thread_of_a_line(), me.name))

    _in_thread(work)
    seen.append((_thread_of_a_line(), threading.current_thread().name))
    assert all(written == name for written, name in seen), seen
    assert [written for written, _ in seen][:4] == ["first", "first", "second\u2028", "first"]


def test_a_thread_subclass_with_its_own_name_is_asked() -> None:
    class Named(threading.Thread):
        @property
        def name(self) -> str:
            return "named by the subclass"

        @name.setter
        def name(self, value: str) -> None:
            pass

    seen: list[str] = []
    _in_thread(lambda: seen.append(_thread_of_a_line()), Named)
    assert seen == ["named by the subclass"]


def test_a_thread_threading_did_not_start_gets_its_dummy_name() -> None:
    done = threading.Event()
    seen: list[tuple[str, str]] = []

    def work() -> None:
        seen.append((_thread_of_a_line(), threading.current_thread().name))
        done.set()

    _thread.start_new_thread(work, ())
    assert done.wait(10)
    ((written, name),) = seen
    assert written == name and name.startswith("Dummy-")


@pytest.mark.parametrize("thread", ["given", "given\x85"])
def test_a_given_thread_name_is_written_as_given(thread: str) -> None:
    for _ in range(2):
        obj = split_json(json_line(TS, 20, "stage", "l", None, None, "m", thread=thread).decode())
        assert obj is not None and obj["thread"] == thread


@settings(max_examples=3000, deadline=None)
@given(
    ms=st.one_of(
        st.floats(allow_nan=False, allow_infinity=False),
        st.floats(min_value=0, max_value=1e6),
        st.integers(0, 10**9).map(lambda n: n / 1000 + 0.0005),  # exact halves of the last digit
    )
)
def test_a_json_duration_is_the_float_rounded_to_three_decimals(ms: float) -> None:
    line = json_line(TS, 20, "request_end", "flask_diaglog.request", "r1", None, "m",
                     ("GET", "/", "/", 200, ms)).decode()  # fmt: skip
    assert f'"duration_ms":{round(ms, 3)!r},' in line
    assert split_json(line)["duration_ms"] == round(ms, 3)  # type: ignore[index]


class _Str(str):
    """A str subclass (the fast paths encode it as the loop does: its text, not its ``str()``)."""

    def __str__(self) -> str:
        return "not the text"

    def __format__(self, spec: str) -> str:
        return "not the text"


#: Values of the per-request fields as requests give them (strings, ints, finite floats, None),
#: and the near misses that must leave the one-f-string path for the loop (a value that is not
#: a str reaches the fast path's try and leaves it at encode_basestring's TypeError).
request_values = {
    "str": st.one_of(
        text,
        st.sampled_from(["GET", "/", "/items/<int:id>", "127.0.0.1"]),
        text.map(_Str),
        st.sampled_from([None, 1, 2.5, True, b"GET", ["GET"]]),
    ),
    "str_or_none": st.one_of(st.none(), text, st.integers(), text.map(_Str)),
    "int": st.one_of(st.integers(100, 599), st.none(), st.booleans()),
    "float": st.one_of(
        st.floats(0, 1e6),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([1e12, -1e12, 0.5, 2.0]),
    ),
    "bool": st.one_of(st.booleans(), st.none(), st.integers(0, 1)),
}
SHAPES = {
    "request_start": ("str", "str", "str_or_none", "str", "str_or_none", "bool"),
    "request_end": ("str", "str", "str_or_none", "int", "float"),
    "stage": ("str", "float", "bool"),
}


@settings(max_examples=600, suppress_health_check=list(HealthCheck), deadline=None)
@given(kind=st.sampled_from(sorted(SHAPES)), data=st.data())
def test_the_request_lines_fast_path_writes_what_the_loop_writes(
    kind: str, data: st.DataObject
) -> None:
    fields = tuple(data.draw(request_values[shape]) for shape in SHAPES[kind])
    as_dict = dict(zip(FIELDS[kind], fields, strict=False))
    exc, thread = data.draw(st.tuples(st.one_of(st.none(), text), st.one_of(st.none(), text)))
    parts = (TS, 20, kind, "flask_diaglog.request", "r1", None, "m")
    line = json_line(*parts, fields, exc, thread)
    assert line == json_line(*parts, as_dict, exc, thread)


def test_given_names_and_threads_interleaved_each_line_its_own() -> None:
    def thread_of(name: str | None) -> str:
        line = json_line(TS, 20, "stage", "l", "r", None, "m", ("s", 1.0, True), None, name)
        obj = split_json(line.decode("utf-8", "backslashreplace"))
        assert obj is not None
        return str(obj["thread"])

    me = threading.current_thread()
    seen: list[tuple[str, str]] = []

    def work() -> None:
        other = threading.current_thread()
        for name in (None, other.name, None, "given", None, "", None, me.name, None):
            seen.append((thread_of(name), other.name if name is None else name))
            seen.append((thread_of(None), other.name))

    _in_thread(work)
    for name in (None, "worker\n1", None, "", None):
        seen.append((thread_of(name), me.name if name is None else name))
    assert all(written == expected for written, expected in seen), seen


SECOND = float(int(TS))


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(-2e9, 4e9),
            st.floats(-2.0, 2.0),
            st.integers(-2, 2).map(lambda n: SECOND + n),
            st.sampled_from(
                [TS, 0.0, -0.0, 1.0, -1.0, 0.9999, -0.9999, math.nextafter(SECOND + 1, 0)]
            ),
            st.integers(-(10**9), 4 * 10**9),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_a_json_timestamp_is_its_local_time_whatever_came_before(stamps: list[float]) -> None:
    """The cached second parts never leak into another second: each ``ts`` is the local time
    ``datetime`` gives, to the millisecond (cut, not rounded), with its UTC offset."""
    for ts in stamps * 2:
        line = json_line(ts, 20, "request_end", "l", None, None, "m", ("GET", "/", None, 200, 1.0))
        assert line.startswith(f'{{"ts":"{_local_iso(ts)}",'.encode()), (ts, line)


def _local_iso(ts: float) -> str:
    sec = math.floor(ts)
    ms = min(999, math.floor((ts - sec) * 1000))
    local = datetime.fromtimestamp(sec).astimezone()
    off = int(local.utcoffset().total_seconds())  # type: ignore[union-attr]
    sign, a = "+" if off >= 0 else "-", abs(off)  # hh:mm, as ISO 8601 has it (LMT: seconds cut)
    return f"{local:%Y-%m-%dT%H:%M:%S}.{ms:03d}{sign}{a // 3600:02d}:{a % 3600 // 60:02d}"
