"""Who may see the dashboard, and the headers every dashboard answer carries.

* Without ``DIAGLOG_DASHBOARD_TOKEN``: loopback clients only, decided by :mod:`ipaddress`
  (``127.0.0.0/8``, ``::1``, and IPv4-mapped ``::ffff:127.x.y.z``); anything else, or an address
  that does not parse, is refused. A request a proxy forwarded for another client
  (``X-Forwarded-For``, ``X-Real-IP`` or ``Forwarded`` naming any address that is not loopback)
  is refused too, with or without ProxyFix: so the live socket's handshake, which reaches
  Flask-SocketIO outside ``app.wsgi_app`` (where ProxyFix usually sits), is judged as the pages
  are. And the ``Host`` header (with every host a proxy named in ``X-Forwarded-Host`` or
  ``Forwarded``) must name a loopback host (:func:`is_loopback_host`): a browser sends the name
  it was asked to open, so a page of another site whose name was rebound to 127.0.0.1 (DNS
  rebinding) is refused although its requests come from loopback.
* With a token: every credential the request presents is tried (the cookie, an
  ``Authorization: Bearer`` header, ``?token=``); one that matches admits it.
* The cookie never holds the token: it holds when it expires and an HMAC of the token and that
  time (:func:`cookie_value`), and it is set only when a ``?token=`` was accepted. It admits for
  :data:`COOKIE_MAX_AGE` seconds (its ``Max-Age``; the server checks the time it holds too, so a
  copied cookie expires as well), then the page is opened with ``?token=`` again. It is HttpOnly,
  SameSite=Strict, limited to the dashboard's path, and Secure when the request came over HTTPS.
  A page asked for with a ``?token=`` is answered with a redirect to its URL without it
  (:func:`without_token`), so the token leaves the address bar and is not sent again with every
  refresh.
* Guessing: every token a refused request presented counts against its client
  (:mod:`flask_diaglog.attempts`), one ``?token=`` a request, and a client with too many is held
  off (:func:`refusal`), the right token included. The credentials are counted as they are judged,
  in one step with the check, so a burst of concurrent guesses cannot pass the limit. A refused
  cookie counts nothing: an HMAC is no guess.
* The live socket (when the app streams events over Socket.IO) is admitted by the same rule
  (:func:`socket_admission`): the page never holds a live token. A second copy of the cookie,
  limited to Socket.IO's path, travels with the same-origin handshake; it is set with the first
  and on every page a cookie holder loads (expiring when the holder's cookie does). The live
  bridge counts and holds off the handshake as a whole
  (:meth:`~flask_diaglog.live.LiveBridge.admission`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote_plus

from flask import Request, request
from werkzeug.wrappers import Response

from ..attempts import (
    LIMIT,
    WINDOW,
    Attempts,
    bearer_token,
    client_of,
    presented,
    query_tokens,
    same_token,
)
from ..problems import problem_response

__all__ = [
    "COOKIE",
    "COOKIE_MAX_AGE",
    "SECURITY_HEADERS",
    "admitted",
    "cookie_value",
    "host_is_local",
    "is_local",
    "is_loopback",
    "is_loopback_host",
    "refusal",
    "remember",
    "security_headers",
    "socket_admission",
    "without_token",
]

COOKIE = "diaglog_dashboard"
#: Seconds the cookie (both copies) admits its holder after the ``?token=`` that set it: 12 hours.
COOKIE_MAX_AGE = 12 * 3600

#: Headers on every dashboard answer (pages, API, static files, refusals).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


#: A host (and port) that may be named in the CSP as is.
_HOST = re.compile(r"[A-Za-z0-9.-]+(:\d+)?|\[[0-9A-Fa-f:.]+\](:\d+)?")


def security_headers(host: str | None = None) -> dict[str, str]:
    """:data:`SECURITY_HEADERS`; with ``host`` (the request's own, for a page with a live socket)
    ``connect-src`` also names ``ws://`` and ``wss://`` of that host. CSP 3's ``'self'`` covers
    them already; older browsers need them named. Any other host stays forbidden."""
    headers = dict(SECURITY_HEADERS)
    if host is not None and _HOST.fullmatch(host):
        csp = headers["Content-Security-Policy"]
        headers["Content-Security-Policy"] = csp.replace(
            "connect-src 'self'", f"connect-src 'self' ws://{host} wss://{host}"
        )
    return headers


def is_loopback(addr: str | None) -> bool:
    """Whether ``addr`` is a loopback address (IPv4-mapped IPv6 included)."""
    if not addr:
        return False
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def wall_clock() -> float:
    """The cookies' clock: epoch seconds, as every worker and host reads it (tests replace it)."""
    return time.time()


def cookie_value(token: str, expires: int | None = None) -> str:
    """What the cookie holds for ``token``: ``<expires>.<HMAC of the token and expires>``, never
    the token itself. ``expires`` (epoch seconds) is :data:`COOKIE_MAX_AGE` from now unless
    given."""
    if expires is None:
        expires = int(wall_clock()) + COOKIE_MAX_AGE
    mac = hmac.new(
        token.encode(), f"flask-diaglog dashboard cookie {expires}".encode(), hashlib.sha256
    )
    return f"{expires}.{mac.hexdigest()}"


def _cookie_expiry(request: Request, token: str) -> int | None:
    """When the request's cookie expires, if it admits now: one this token's holder was given
    (any other value, one of the old format without an expiry included, is ``None``), not
    expired, and at most :data:`COOKIE_MAX_AGE` (and a minute) ahead, so a cookie set while the
    clock ran ahead does not outlive the clock's repair by years."""
    cookie = request.cookies.get(COOKIE) or ""
    head, dot, _ = cookie.partition(".")
    if not (dot and head.isascii() and head.isdigit() and len(head) <= 12):
        return None
    expires = int(head)
    now = wall_clock()
    if not now < expires <= now + COOKIE_MAX_AGE + 60:
        return None
    return expires if same_token(cookie, cookie_value(token, expires)) else None


#: ``for=`` and ``host=`` of one ``Forwarded`` element (RFC 7239), quoted or not.
_FORWARDED_PARAM = {
    p: re.compile(rf'(?:^|;)\s*{p}\s*=\s*("[^"]*"|[^;,\s]*)', re.IGNORECASE)
    for p in ("for", "host")
}


def _listed(environ: Any, *keys: str) -> list[str]:
    """Every comma-separated entry of the headers ``keys`` (``X-Forwarded-For``, ...)."""
    named: list[str] = []
    for key in keys:
        value = environ.get(key)
        if value is not None:
            named += [a.strip() for a in str(value).split(",")]
    return named


def _forwarded(environ: Any, param: str) -> list[str]:
    """Every ``param=`` value (``for``, ``host``) of the ``Forwarded`` header, unquoted."""
    return [
        m[1].strip('"')
        for element in str(environ.get("HTTP_FORWARDED") or "").split(",")
        for m in _FORWARDED_PARAM[param].finditer(element)
    ]


def _forwarded_for(environ: Any) -> list[str]:
    """The client addresses proxies named in the request's forwarding headers."""
    named = _listed(environ, "HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP")
    for value in _forwarded(environ, "for"):
        if value.startswith("["):  # [v6]:port
            value = value[1:].partition("]")[0]
        elif value.count(":") == 1:  # v4:port
            value = value.partition(":")[0]
        named.append(value)
    return named


#: A Host header: a bracketed IPv6 address or a name (or IPv4 address), and an optional port.
_HOST_HEADER = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+))(?::[0-9]{1,5})?")


def is_loopback_host(host: str | None) -> bool:
    """Whether a ``Host`` header value names a loopback host, with any port or none:
    ``localhost``, a name under ``.localhost``, an address in ``127.0.0.0/8``, ``[::1]`` (or
    an IPv4-mapped loopback address in brackets)."""
    m = _HOST_HEADER.fullmatch(host or "")
    if m is None:
        return False
    if m[1] is not None:
        return is_loopback(m[1])
    name = m[2].lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    return name.count(".") == 3 and is_loopback(name)  # a dotted IPv4 address, never a name


def _named_hosts(environ: Any) -> list[str]:
    """The ``Host`` header and every host a proxy named for the request (``X-Forwarded-Host``,
    ``Forwarded: host=``); ProxyFix may have made one of them the ``Host``."""
    return [
        str(environ.get("HTTP_HOST") or ""),
        *_listed(environ, "HTTP_X_FORWARDED_HOST"),
        *_forwarded(environ, "host"),
    ]


def host_is_local(request: Request) -> bool:
    """Whether ``request`` names a loopback host in its ``Host`` header, and in every host a
    proxy named for it (a missing or empty one counts as not loopback)."""
    return all(is_loopback_host(h) for h in _named_hosts(request.environ))


def is_local(request: Request) -> bool:
    """Whether ``request`` came from a loopback client: its address, and every client address a
    proxy named for it (an empty or unknown one counts as not loopback)."""
    return is_loopback(request.remote_addr) and all(
        is_loopback(a) for a in _forwarded_for(request.environ)
    )


def admitted(request: Request, token: str | None) -> bool:
    """Whether ``request`` may see the dashboard (see the module docstring)."""
    if token is None:
        return is_local(request) and host_is_local(request)
    if _cookie_expiry(request, token) is not None:
        return True
    bearer = bearer_token(request)
    if bearer and same_token(bearer, token):
        return True
    return _query_token(request, token)


def _query_token(request: Request, token: str) -> bool:
    """Whether the request's ``?token=`` is ``token``: one value only, so that one request tries
    one token (several are refused, and each counts as a guess)."""
    given = query_tokens(request)
    return len(given) == 1 and same_token(given[0], token)


def _refused(request: Request, token: str | None) -> Response:
    """The 403 for a request :func:`admitted` refuses, saying why."""
    if token is None and is_local(request) and not host_is_local(request):
        host = str(request.environ.get("HTTP_HOST") or "")[:100]
        return problem_response(
            403,
            "Dashboard access denied",
            "Without DIAGLOG_DASHBOARD_TOKEN the diaglog dashboard answers loopback clients "
            "that name a loopback host only (Host: localhost, *.localhost, 127.x.y.z or "
            f"[::1], any port), and this request names {host!r} (or a proxy named another "
            "host): a page of another site whose name points to 127.0.0.1 (DNS rebinding) "
            "must not read it. Open it as http://127.0.0.1:<port>/ or "
            "http://localhost:<port>/, or set DIAGLOG_DASHBOARD_TOKEN to open it under "
            "any name.",
        )
    return problem_response(
        403,
        "Dashboard access denied",
        "The diaglog dashboard answers loopback clients only, or clients that present "
        "DIAGLOG_DASHBOARD_TOKEN (?token=..., Authorization: Bearer ..., or the cookie "
        "a ?token= sets).",
    )


def _too_many(wait: float) -> Response:
    """The 429 for a client held off for ``wait`` seconds, with ``Retry-After``."""
    seconds = max(1, math.ceil(wait))
    response = problem_response(
        429,
        "Too many token attempts",
        f"This client presented {LIMIT} refused DIAGLOG_DASHBOARD_TOKEN credentials "
        f"(?token=..., Authorization: Bearer ..., or the cookie) within {WINDOW:g} seconds: "
        f"the dashboard refuses it, whatever it presents, for {seconds} more seconds.",
        type_="urn:flask-diaglog:problem:too-many-attempts",
    )
    response.headers["Retry-After"] = str(seconds)
    return response


def refusal(request: Request, token: str | None, attempts: Attempts) -> Response | None:
    """The answer to a dashboard ``request`` that may not see it, ``None`` when it may: a
    client held off for guessing gets a 429 problem+json with ``Retry-After`` (whatever it
    presents), a refused one a 403 problem+json (counted against its client when it presented
    a credential) in ``attempts``, the app's counts. The credentials are counted before they
    are judged, in the same step as the check (:meth:`Attempts.take`), and taken back when
    accepted: a burst of concurrent guesses cannot pass the limit."""
    if token is None:  # no credential is taken: only a local client on a local host
        return None if admitted(request, None) else _refused(request, None)
    client = client_of(request.remote_addr)
    n = presented(request)
    wait = attempts.take(client, n)
    if wait > 0:
        return _too_many(wait)
    if admitted(request, token):
        attempts.forgive(client, n)
        return None
    return _refused(request, token)


def without_token(request: Request) -> str | None:
    """The URL of ``request`` without its ``token`` parameters (every other parameter kept as it
    came, in its order), as a path from the server's root; ``None`` when it has none."""
    pairs = request.query_string.split(b"&")
    kept = [p for p in pairs if unquote_plus(p.partition(b"=")[0].decode("latin-1")) != "token"]
    if len(kept) == len(pairs):
        return None
    query = b"&".join(p for p in kept if p).decode("latin-1")
    path = "/" + quote(request.script_root + request.path).lstrip("/")  # never //host/...
    return path + ("?" + query if query else "")


def socket_admission(token: str | None) -> Callable[[Any], bool]:
    """``admit(auth) -> bool`` for the live socket's connect handler: :func:`admitted` applied to
    the Socket.IO handshake request (its cookie, or loopback without a token). The live bridge
    holds off and counts the handshake as a whole (see :mod:`flask_diaglog.attempts`)."""

    def admit(auth: Any) -> bool:
        return admitted(request, token)

    return admit


def remember(
    request: Request,
    response: Response,
    token: str | None,
    path: str,
    socket_path: str | None = None,
) -> None:
    """Set the cookie, for :data:`COOKIE_MAX_AGE` seconds, when the request's ``?token=`` is the
    right one (never a refused one). With ``socket_path``, an HTML page for a holder of the right
    ``?token=`` or cookie also sets the copy the live socket's handshake carries (never a
    Bearer-only client's): for a cookie holder, the same value, expiring with it."""
    if token is None:
        return
    expires = _cookie_expiry(request, token)
    if _query_token(request, token):
        value, max_age, paths = cookie_value(token), COOKIE_MAX_AGE, [path]
    elif expires is not None:
        value = request.cookies[COOKIE]
        max_age, paths = min(int(expires - wall_clock()), COOKIE_MAX_AGE), []
    else:
        return
    if socket_path and response.mimetype == "text/html":
        paths.append(socket_path.rstrip("/") or "/")
    for where in paths:
        response.set_cookie(
            COOKIE,
            value,
            max_age=max_age,
            path=request.script_root + where,
            httponly=True,
            samesite="Strict",
            secure=request.is_secure,
        )
