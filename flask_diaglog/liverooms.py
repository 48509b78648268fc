"""Live rooms: the Socket.IO rooms of the live stream, which a client may join, and how many.

Owns the room vocabulary and the subscription rules of :mod:`flask_diaglog.live`:

* :func:`rooms_for`: the rooms an event goes to: ``all``, ``job:<id>``, ``request:<id>``, and for
  a log record ``log:<LEVEL>`` for each level at or below its own.
* :func:`requested_rooms`: the :class:`Room` list a ``subscribe``/``unsubscribe`` payload names:
  ``{"job_id": "j1"}``, ``{"request_id": "r1"}``, ``{"level": "WARNING"}``, ``{"all": true}``
  (``all`` must be ``true`` when given), or several of them at once.
* :class:`Subscriber`: one connected client, how it was admitted and the rooms it is in; its
  :meth:`~Subscriber.subscribe` says what a ``subscribe`` may join. The admission decides:

  - an **operator** (:data:`OPERATOR`: admitted by ``DIAGLOG_LIVE_TOKEN`` or by the dashboard's
    rule) may join every room;
  - a **user** (:data:`USER`: admitted by the app's ``live_auth``) may join a room when the app's
    ``live_subscribe(kind, value)`` allows it; without one, job and request rooms (whoever knows
    the id may follow it) but never the firehose (``all``, ``level``).

  One refused room refuses the whole payload. A client is in at most ``max_rooms`` rooms (the
  app's ``DIAGLOG_LIVE_MAX_ROOMS``, default :data:`MAX_ROOMS`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from .config import DEFAULTS, ConfigError
from .context import as_id, is_valid_id
from .trail import LEVEL_NAMES, LEVELS
from .values import parse_level

if TYPE_CHECKING:
    from .record import Event

__all__ = [
    "MAX_ROOMS",
    "OPERATOR",
    "USER",
    "LiveSubscribe",
    "Room",
    "Subscriber",
    "requested_rooms",
    "rooms_for",
]

logger = logging.getLogger("flask_diaglog.live")

#: Rooms one client may be in at once (its own Socket.IO room not counted) unless
#: ``DIAGLOG_LIVE_MAX_ROOMS`` says otherwise: that key's default.
MAX_ROOMS: int = DEFAULTS["DIAGLOG_LIVE_MAX_ROOMS"]
#: Admitted by ``DIAGLOG_LIVE_TOKEN`` or by the dashboard's rule: every room.
OPERATOR = "operator"
#: Admitted by the app's ``live_auth``: the rooms ``live_subscribe`` allows.
USER = "user"
#: The kinds of room a user may join when the app has no ``live_subscribe``.
USER_DEFAULT_KINDS = frozenset({"job", "request"})

#: ``live_subscribe(kind, value) -> bool``: may this client join that room? ``kind`` is ``"job"``,
#: ``"request"`` (``value``: the id), ``"level"`` (``value``: the level name) or ``"all"``
#: (``value``: ``None``). Runs in the Socket.IO handshake's request context, like ``live_auth``.
LiveSubscribe = Callable[[str, str | None], bool]


class Room(NamedTuple):
    """A room a client asked for: its ``kind`` and ``value`` (see :data:`LiveSubscribe`)."""

    kind: str
    value: str | None

    @property
    def name(self) -> str:
        """The Socket.IO room's name, as :func:`rooms_for` names it."""
        if self.kind == "all":
            return "all"
        return f"{'log' if self.kind == 'level' else self.kind}:{self.value}"


def rooms_for(ev: Event) -> list[str]:
    """The Socket.IO rooms that want ``ev``."""
    rooms = ["all"]
    if ev.job_id is not None:
        rooms.append(f"job:{ev.job_id}")
    if ev.request_id is not None:
        rooms.append(f"request:{ev.request_id}")
    if ev.kind == "log":
        rooms.extend(f"log:{name}" for name, no in LEVELS.items() if no <= ev.level)
    return rooms


def requested_rooms(data: Any) -> list[Room]:
    """Rooms named by a ``subscribe``/``unsubscribe`` payload; ``ValueError`` when invalid."""
    if not isinstance(data, Mapping):
        raise ValueError(
            'expected an object such as {"job_id": "..."}, {"request_id": "..."}, '
            '{"level": "WARNING"} or {"all": true}'
        )
    rooms: list[Room] = []
    for key in ("job_id", "request_id"):
        value = data.get(key)
        if key == "job_id":
            value = as_id(value)  # a number, as the guard takes it
        if value is None:
            continue
        if not is_valid_id(value):
            raise ValueError(f"{key} must be 1 to 128 characters of A-Z a-z 0-9 . _ : -")
        rooms.append(Room(key.partition("_")[0], value))
    level = data.get("level")
    if level is not None:
        try:  # a name in any case or its number, as DIAGLOG_LEVEL takes it
            rooms.append(Room("level", LEVEL_NAMES[parse_level(level, "level", "subscribe")]))
        except ConfigError:
            raise ValueError(f"level must be one of {', '.join(LEVELS)}") from None
    if data.get("all", False) is not False:
        if data["all"] is not True:
            raise ValueError("all must be true")
        rooms.append(Room("all", None))
    if not rooms:
        raise ValueError("name at least one of job_id, request_id, level or all")
    return rooms


@dataclass
class Subscriber:
    """One connected client: how it was admitted (:data:`OPERATOR`, :data:`USER`; ``None``
    counts as a user) and the rooms it joined (its own Socket.IO room not counted)."""

    admission: str | None
    rooms: set[str] = field(default_factory=set)

    def may_join(self, room: Room, check: LiveSubscribe | None) -> bool:
        """Whether this client may join ``room``; ``check`` is the app's ``live_subscribe``."""
        if self.admission == OPERATOR:
            return True
        if check is None:
            return room.kind in USER_DEFAULT_KINDS
        try:
            return bool(check(room.kind, room.value))
        except Exception:
            logger.exception("flask-diaglog: live_subscribe raised; %s is refused", room.name)
            return False

    def subscribe(
        self, data: Any, check: LiveSubscribe | None, max_rooms: int = MAX_ROOMS
    ) -> list[str]:
        """The room names a ``subscribe`` payload joins, counted as joined. ``ValueError``,
        naming the reason, when the payload is invalid, a room is refused, or the client would
        be in more than ``max_rooms`` rooms: then none is."""
        rooms = requested_rooms(data)
        for room in rooms:
            if not self.may_join(room, check):
                raise ValueError(f"not allowed to subscribe to {room.name}")
        names = [room.name for room in rooms]
        if len(self.rooms.union(names)) > max_rooms:
            raise ValueError(
                f"too many rooms: a client may be in at most {max_rooms} (this one is in "
                f"{len(self.rooms)}); unsubscribe from some first"
            )
        self.rooms.update(names)
        return names

    def unsubscribe(self, data: Any) -> list[str]:
        """The room names an ``unsubscribe`` payload leaves (never refused when valid)."""
        names = [room.name for room in requested_rooms(data)]
        self.rooms.difference_update(names)
        return names
