"""Live Socket.IO bridge (filled in by the live-events work)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .extension import _State


def setup(state: _State) -> None:
    """Nothing yet."""
