"""Token guessing: the refused dashboard credentials each client presented, in one process.

With ``DIAGLOG_DASHBOARD_TOKEN`` set, a request that presents a credential (a ``?token=``, an
``Authorization: Bearer`` header or the dashboard's cookie) and is refused counts against its
client. :data:`LIMIT` of them within :data:`WINDOW` seconds hold the client off: every dashboard
request from it (the right token included) gets a ``429`` until the oldest of them is
:data:`WINDOW` seconds old, so a client never tries more than :data:`LIMIT` tokens a window.
Requests that present no credential, and admitted ones, count nothing and reset nothing.

A client is the request's address as the WSGI server (or the app's ``ProxyFix``) gives it, never
a forwarding header the client could write itself; an IPv6 client is its ``/64`` network, which
one host usually holds whole. At most :data:`CLIENTS` clients are tracked; the one refused
least recently is forgotten first. Each process keeps its own counts.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["CLIENTS", "LIMIT", "WINDOW", "Attempts", "client_of", "clock"]

#: Refused credentials a client may present within :data:`WINDOW` seconds.
LIMIT = 10
#: Seconds a refused credential counts against its client.
WINDOW = 60.0
#: The most clients tracked at once.
CLIENTS = 4096


def clock() -> float:
    """The counts' clock: monotonic seconds (tests replace it)."""
    return time.monotonic()


def client_of(addr: str | None) -> str:
    """The client an address counts for: an IPv4 address (IPv4-mapped IPv6 included) as itself,
    an IPv6 address as its ``/64`` network; anything else as its text, cut to 64 characters."""
    text = (addr or "")[:64]
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return text
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Attempts:
    """The refused credentials of each client (see the module docstring); thread-safe.

    :param now: the clock, monotonic seconds (default: :func:`clock`, looked up at each call).
    """

    def __init__(
        self,
        limit: int = LIMIT,
        window: float = WINDOW,
        clients: int = CLIENTS,
        now: Callable[[], float] | None = None,
    ) -> None:
        self.limit = limit
        self.window = window
        self.clients = clients
        self._now = now
        self._lock = threading.Lock()
        #: Client to the times of its last ``limit`` refusals, oldest first; the client refused
        #: least recently first.
        self._refused: OrderedDict[str, tuple[float, ...]] = OrderedDict()

    def now(self) -> float:
        return self._now() if self._now is not None else clock()

    def wait(self, client: str) -> float:
        """Seconds until ``client`` may present a credential again; 0 when it may now."""
        with self._lock:
            times = self._refused.get(client)
            if times is None or len(times) < self.limit:
                return 0.0
            return max(0.0, times[0] + self.window - self.now())

    def refused(self, client: str) -> None:
        """Count a refused credential of ``client``."""
        with self._lock:
            times = self._refused.pop(client, ())
            kept = times[max(0, len(times) + 1 - self.limit) :]
            self._refused[client] = (*kept, self.now())  # to the end: refused most recently
            while len(self._refused) > self.clients:
                self._refused.popitem(last=False)
