"""pytest plugin (registered through the ``pytest11`` entry point as ``diaglog``).

Fixtures:

* ``diaglog_events``: every diaglog event dispatched during the test, as a
  :class:`~flask_diaglog.testing.EventCapture` (filter by kind, job and request; ``logged()``,
  ``stage_names()``, ``wait_for()`` ...). Works with pytest-flask's ``client`` fixture, or any
  test client, since it listens to the signals of every app.

When a test that uses it fails, the captured events are attached to the report as a
"diaglog events" section, rendered like the plain log lines.

This module is loaded in every pytest run of a project that has flask-diaglog installed, so it
imports nothing heavy at import time; disable it with ``-p no:diaglog``.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .testing import EventCapture

__all__ = ["diaglog_events"]

_CAPTURE = pytest.StashKey["EventCapture"]()


@pytest.fixture
def diaglog_events(request: pytest.FixtureRequest) -> Iterator[EventCapture]:
    """The diaglog events dispatched during this test (from every app)."""
    from .testing import capture_events

    with capture_events() as events:
        request.node.stash[_CAPTURE] = events
        yield events


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """Attach the captured events to the report of the test's call phase."""
    try:
        return (yield)
    finally:
        events = item.stash.get(_CAPTURE, None)
        if events is not None and len(events):
            item.add_report_section("call", "diaglog events", events.render())
