"""Job guard (filled in by the job-guard work)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .extension import _State


def setup(state: _State) -> None:
    """Nothing yet."""
