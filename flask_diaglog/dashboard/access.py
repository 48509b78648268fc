"""Who may see the dashboard, and the headers every dashboard answer carries.

* Without ``DIAGLOG_DASHBOARD_TOKEN``: loopback clients only, decided by :mod:`ipaddress`
  (``127.0.0.0/8``, ``::1``, and IPv4-mapped ``::ffff:127.x.y.z``); anything else, or an address
  that does not parse, is refused.
* With a token: every credential the request presents is tried (the cookie, an
  ``Authorization: Bearer`` header, ``?token=``); one that matches admits it.
* The cookie never holds the token: it holds an HMAC of it (:func:`cookie_value`), and it is set
  only when a ``?token=`` was accepted. It is HttpOnly, SameSite=Strict, limited to the
  dashboard's path, and Secure when the request came over HTTPS.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

from flask import Request
from werkzeug.wrappers import Response

__all__ = ["COOKIE", "SECURITY_HEADERS", "admitted", "cookie_value", "is_loopback", "remember"]

COOKIE = "diaglog_dashboard"

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


def cookie_value(token: str) -> str:
    """What the cookie holds for ``token``: an HMAC of it, never the token itself."""
    return hmac.new(token.encode(), b"flask-diaglog dashboard cookie", hashlib.sha256).hexdigest()


def _matches(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def admitted(request: Request, token: str | None) -> bool:
    """Whether ``request`` may see the dashboard (see the module docstring)."""
    if token is None:
        return is_loopback(request.remote_addr)
    cookie = request.cookies.get(COOKIE)
    if cookie and _matches(cookie, cookie_value(token)):
        return True
    auth = request.headers.get("Authorization", "")
    scheme, _, bearer = auth.partition(" ")
    if scheme.lower() == "bearer" and bearer.strip() and _matches(bearer.strip(), token):
        return True
    given = request.args.get("token")
    return given is not None and given != "" and _matches(given, token)


def remember(request: Request, response: Response, token: str | None, path: str) -> None:
    """Set the cookie when the request's ``?token=`` is the right one (never a refused one)."""
    given = request.args.get("token")
    if token is None or not given or not _matches(given, token):
        return
    value = cookie_value(token)
    if request.cookies.get(COOKIE) == value:
        return
    response.set_cookie(
        COOKIE,
        value,
        path=request.script_root + path,
        httponly=True,
        samesite="Strict",
        secure=request.is_secure,
    )
