"""Every line's timestamp is the local time of the moment it was recorded, in both layouts.

The renderers keep the parts of the current second and build the next second of the same minute
from them: across minutes, hours, days, a clock stepped back and a change of UTC offset (daylight
saving time), each line must still read what ``time.localtime`` says.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_diaglog.files.render import json_line, plain_line

#: 2026-03-29 01:00:00 UTC: Berlin moves from +01:00 to +02:00; 2026-10-25 01:00:00 UTC: back.
SPRING, AUTUMN = 1_774_746_000, 1_792_890_000


@pytest.fixture(autouse=True)
def berlin() -> Iterator[None]:
    before = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Berlin"
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


def expected(ts: float) -> tuple[str, str]:
    """The plain and the ISO timestamp of ``ts``, from ``time.localtime`` directly."""
    lt = time.localtime(int(ts))
    ms = f".{int((ts - int(ts)) * 1000):03d}"
    off = lt.tm_gmtoff
    offset = f"{'+' if off >= 0 else '-'}{abs(off) // 3600:02d}:{abs(off) % 3600 // 60:02d}"
    return (
        time.strftime("%Y-%m-%d %H:%M:%S", lt) + ms,
        time.strftime("%Y-%m-%dT%H:%M:%S", lt) + ms + offset,
    )


def stamps(ts: float) -> tuple[str, str]:
    plain = plain_line(ts, 20, "log", "app", None, None, "m").decode()
    line = json_line(ts, 20, "log", "app", None, None, "m").decode()
    return plain[:23], json.loads(line)["ts"]


@settings(max_examples=60, deadline=None)
@given(
    start=st.sampled_from([SPRING, AUTUMN, 1_798_761_599]),  # the last: New Year's Eve, 23:59:59
    steps=st.lists(st.floats(min_value=-3700, max_value=3700), min_size=1, max_size=40),
)
def test_each_timestamp_is_the_local_time_of_its_moment(start: int, steps: list[float]) -> None:
    ts = start - 90.25
    for step in steps:
        # Mostly small steps forward (the next second, the next minute), some large, some back.
        ts += step / 60 if abs(step) < 3000 else step
        assert stamps(ts) == expected(ts)


def test_the_offset_changes_with_daylight_saving_time() -> None:
    before, after = stamps(SPRING - 0.5), stamps(SPRING + 0.5)
    assert before == ("2026-03-29 01:59:59.500", "2026-03-29T01:59:59.500+01:00")
    assert after == ("2026-03-29 03:00:00.500", "2026-03-29T03:00:00.500+02:00")
