"""Token guessing: the refused credentials each client presented, in one process.

Owns the counts that hold a guesser off, shared by the dashboard (``DIAGLOG_DASHBOARD_TOKEN``: a
wrong ``?token=`` or ``Authorization: Bearer``) and the live socket's handshake (a wrong
``DIAGLOG_LIVE_TOKEN`` or dashboard credential, on a handshake refused as a whole). :data:`LIMIT`
of them within :data:`WINDOW` seconds hold the client off: every credential it presents (the
right one included) is refused until the oldest of them is :data:`WINDOW` seconds old, so a
client never tries more than :data:`LIMIT` tokens a window. Requests that present no credential,
and admitted ones, count nothing and reset nothing. The dashboard's cookie is an HMAC that cannot
be guessed, so a refused one (a tab of an old token) counts nothing either.

A client is the request's address as the WSGI server (or the app's ``ProxyFix``) gives it, never
a forwarding header the client could write itself; an IPv6 client is its ``/64`` network, which
one host usually holds whole. At most :data:`CLIENTS` clients are tracked; the one refused
least recently is forgotten first. Each process keeps its own counts.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "CLIENTS",
    "LIMIT",
    "WINDOW",
    "Attempts",
    "bearer_token",
    "client_of",
    "clock",
    "presented",
    "query_tokens",
    "same_token",
]

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
        #: Client to the times of its last ``2 * limit`` refusals, oldest first; the client
        #: refused least recently first.
        self._refused: OrderedDict[str, tuple[float, ...]] = OrderedDict()

    def now(self) -> float:
        return self._now() if self._now is not None else clock()

    def _wait(self, client: str) -> float:
        """Seconds until ``client`` may present a credential again; 0 when it may now."""
        times = self._refused.get(client)
        if times is None or len(times) < self.limit:
            return 0.0
        return max(0.0, times[-self.limit] + self.window - self.now())

    def take(self, client: str, n: int) -> float:
        """Before ``client``'s ``n`` credentials are judged: the seconds it is held off (nothing
        is counted), or 0, and its ``n`` credentials are counted as refused now, in the same
        step. So concurrent requests never pass the limit: each sees the credentials of those
        still being judged. Call :meth:`forgive` with the same ``n`` when they are accepted."""
        with self._lock:
            wait = self._wait(client)
            if wait == 0.0 and n > 0:
                times = self._refused.pop(client, ())
                added = (self.now(),) * min(n, self.limit)
                # Twice the limit are kept: only the last ``limit`` decide the wait, and those
                # survive a forgive() of what was just added.
                kept = times[max(0, len(times) + len(added) - 2 * self.limit) :]
                self._refused[client] = (*kept, *added)  # to the end: refused most recently
                while len(self._refused) > self.clients:
                    self._refused.popitem(last=False)
            return wait

    def forgive(self, client: str, n: int) -> None:
        """Take back ``n`` credentials :meth:`take` counted for ``client``: they were accepted."""
        if n <= 0:
            return
        n = min(n, self.limit)  # what take() counted
        with self._lock:
            times = self._refused.get(client)
            if times is not None:
                kept = times[:-n] if n < len(times) else ()
                if kept:
                    self._refused[client] = kept
                else:
                    del self._refused[client]


def query_tokens(request: Any) -> list[str]:
    """The request's non-empty ``?token=`` values."""
    return [given for given in request.args.getlist("token") if given]


def bearer_token(request: Any) -> str:
    """The token of the request's ``Authorization: Bearer`` header, or ``""``."""
    scheme, _, bearer = request.headers.get("Authorization", "").partition(" ")
    return bearer.strip() if scheme.lower() == "bearer" else ""


def presented(request: Any, auth: Any = None) -> int:
    """How many tokens ``request`` (a Flask request, or a Socket.IO handshake's, with its
    ``auth`` payload) presents: each non-empty ``?token=`` value, an ``Authorization: Bearer``
    token and the payload's ``token``. The dashboard's cookie is none: it cannot be guessed."""
    n = len(query_tokens(request)) + bool(bearer_token(request))
    given = auth.get("token") if isinstance(auth, Mapping) else None
    return n + (isinstance(given, str) and bool(given))


def same_token(given: str, expected: str) -> bool:
    """Whether ``given`` is ``expected``, compared as SHA-256 digests in constant time: not even
    the length of ``expected`` shows in the time taken."""
    digest = hashlib.sha256
    return hmac.compare_digest(
        digest(given.encode("utf-8", "surrogatepass")).digest(), digest(expected.encode()).digest()
    )
