"""Configuration values: the parsers every key's declaration uses, and URL password masking.

Each parser is ``parse(value, key, source) -> parsed`` and raises a :class:`ConfigError` that
names the key, where the value came from and what is accepted. Values in error messages are shown
with URL passwords masked; :mod:`.config` masks secret keys whole.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit

from .trail import LEVEL_NAMES, LEVELS

__all__ = [
    "MASK",
    "SECRET_MIN_LENGTH",
    "ConfigError",
    "is_testing",
    "mask_url",
    "parse_bool",
    "parse_count",
    "parse_dir",
    "parse_float",
    "parse_format",
    "parse_int",
    "parse_level",
    "parse_list",
    "parse_namespace",
    "parse_opt_bool",
    "parse_opt_str",
    "parse_opt_url",
    "parse_prefixes",
    "parse_secret",
    "parse_size",
    "parse_store",
    "parse_str",
    "parse_url_prefix",
]


class ConfigError(ValueError):
    """A ``DIAGLOG_*`` key (or the ``TESTING`` variable) has a value that is not accepted."""

    #: True when the message shows the value as ``***`` already (a secret's own parser said it).
    masked = False


# -- display -----------------------------------------------------------------------------------

MASK = "***"
_URL_START = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_QUERY_PASSWORD = re.compile(r"([?&;]password=)[^&;#]*", re.IGNORECASE)


def mask_url(text: str) -> str:
    """``text`` with the password of a ``scheme://user:password@host`` URL (and any
    ``password=`` query parameter) replaced by ``***``. Anything else is returned unchanged."""
    start = _URL_START.match(text)
    if start is None:
        return text
    head, rest = text[: start.end()], text[start.end() :]
    cut = len(rest)
    for sep in "?#":
        i = rest.find(sep)
        if i != -1:
            cut = min(cut, i)
    main, tail = rest[:cut], rest[cut:]
    at = main.rfind("@")  # the last '@': a password may contain an unescaped '@'
    if at != -1:
        user, colon, password = main[:at].partition(":")
        if colon and password:
            main = f"{user}:{MASK}@{main[at + 1 :]}"
    return head + main + _QUERY_PASSWORD.sub(rf"\g<1>{MASK}", tail)


def _error(value: Any, key: str, source: str, problem: str) -> ConfigError:
    """The one shape of a value error: ``KEY=<value> (from SOURCE) <problem>``; a URL's password
    is masked (a secret key's whole value is masked by :mod:`.config`)."""
    shown = repr(mask_url(value)) if isinstance(value, str) else repr(value)
    return ConfigError(f"{key}={shown} (from {source}) {problem}")


# -- parsers -----------------------------------------------------------------------------------

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
_FORMATS = ("plain", "json")
_STORE_SCHEMES = ("redis://", "rediss://", "unix://")
DASHBOARD_URL = "/_diaglog"
_SIZE_SUFFIX = {
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "b": 1,
}


def parse_bool(value: Any, key: str, source: str) -> bool:
    """Parse a boolean the same way for every key: ``1/true/yes/on`` and ``0/false/no/off/""``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
    raise _error(
        value,
        key,
        source,
        "is not a boolean: use one of 1/true/yes/on or 0/false/no/off (case-insensitive)",
    )


def is_testing(app: Any = None) -> bool:
    """The one test-mode check: the ``TESTING`` environment variable or ``app.config["TESTING"]``.

    An invalid ``TESTING`` environment value raises :class:`ConfigError`.
    """
    env = os.environ.get("TESTING")
    if env is not None and parse_bool(env, "TESTING", "environment variable TESTING"):
        return True
    return bool(app is not None and app.config.get("TESTING"))


def parse_int(value: Any, key: str, source: str, *, sizes: bool = False, minimum: int = 0) -> int:
    """A whole number of at least ``minimum`` (``"25"``, ``1_000``; with ``sizes``, ``10MiB``)."""
    if isinstance(value, bool):
        raise _error(value, key, source, "must be a whole number, not a boolean")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        text = value.strip().lower().replace("_", "")
        mult = 1
        if sizes:
            for suffix in sorted(_SIZE_SUFFIX, key=len, reverse=True):
                if text.endswith(suffix) and text[: -len(suffix)].strip():
                    mult = _SIZE_SUFFIX[suffix]
                    text = text[: -len(suffix)].strip()
                    break
        try:
            n = int(text) * mult
        except ValueError:
            hint = " (a number of bytes, or e.g. 10MiB)" if sizes else ""
            raise _error(value, key, source, f"is not a whole number{hint}") from None
    else:
        raise _error(value, key, source, "must be a whole number")
    if n < minimum:
        must = "must be 0 or more" if minimum == 0 else f"must be at least {minimum}"
        raise _error(value, key, source, must)
    return n


def parse_count(value: Any, key: str, source: str) -> int:
    """A whole number of at least 1."""
    return parse_int(value, key, source, minimum=1)


def parse_size(value: Any, key: str, source: str) -> int:
    return parse_int(value, key, source, sizes=True)


#: The most a duration key takes (seconds, or milliseconds for DIAGLOG_SLOW_MS): beyond it a
#: timer overflows (``threading.TIMEOUT_MAX`` is about 9.2e9 seconds).
MAX_DURATION = 1_000_000_000


def parse_float(value: Any, key: str, source: str) -> float:
    if isinstance(value, bool):
        raise _error(value, key, source, "must be a number of seconds")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise _error(value, key, source, "is not a number (seconds, fractions allowed)") from None
    if f < 0 or f != f:
        raise _error(value, key, source, "must be 0 or more")
    if f > MAX_DURATION:
        raise _error(value, key, source, f"must be at most {MAX_DURATION}")
    return f


def parse_ttl(value: Any, key: str, source: str) -> float:
    """Seconds a job lease lives: at least 0.1, or it expires before it can be renewed."""
    f = parse_float(value, key, source)
    if f < 0.1:
        raise _error(value, key, source, "must be at least 0.1 (seconds): a lease is renewed")
    return f


def parse_list(value: Any, key: str, source: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(p.strip() for p in value.split(",") if p.strip())
    if isinstance(value, list | tuple | set | frozenset):
        out = []
        for item in value:
            if not isinstance(item, str):
                raise _error(value, key, source, "must be a list of strings")
            out.append(item)
        return tuple(out)
    raise _error(value, key, source, "must be a comma-separated string or a list")


def parse_format(value: Any, key: str, source: str) -> str:
    v = str(value).strip().lower()
    if v not in _FORMATS:
        raise _error(
            value,
            key,
            source,
            "is not valid: expected one of " + ", ".join(repr(c) for c in _FORMATS),
        )
    return v


def parse_level(value: Any, key: str, source: str) -> int:
    """A level name (any case) to its number; a standard level number is kept as is."""
    if isinstance(value, int) and not isinstance(value, bool) and value in LEVELS.values():
        return value
    name = str(value).strip().upper()
    if name.isascii() and name.isdigit():  # a number from the environment is a string
        name = LEVEL_NAMES.get(int(name), name)
    if name not in LEVELS:
        numbers = ", ".join(str(n) for n in LEVELS.values())
        raise _error(
            value,
            key,
            source,
            "is not valid: expected one of "
            + ", ".join(repr(c) for c in LEVELS)
            + f" (or its number: {numbers})",
        )
    return LEVELS[name]


def parse_str(value: Any, key: str, source: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _error(value, key, source, "must be a non-empty string")
    return value.strip()


def parse_dir(value: Any, key: str, source: str) -> str:
    """A directory, made absolute against the current working directory."""
    return os.path.abspath(parse_str(value, key, source))


def parse_opt_str(value: Any, key: str, source: str) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return parse_str(value, key, source)


def parse_opt_bool(value: Any, key: str, source: str) -> bool | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("auto", "")):
        return None
    return parse_bool(value, key, source)


def parse_store(value: Any, key: str, source: str) -> str:
    v = parse_str(value, key, source)
    if v.lower() == "memory":
        return "memory"
    if v.startswith(_STORE_SCHEMES):
        parts = urlsplit(v)
        if v.lower().startswith("unix://") and not parts.path.strip("/"):
            raise _error(value, key, source, "needs the socket's path: unix:///path/to/redis.sock")
        try:
            parts.port  # noqa: B018 -- urlsplit checks the port only when asked for it
        except ValueError:
            raise _error(
                value, key, source, "has a port that is not a number from 0 to 65535"
            ) from None
        return v
    raise _error(
        value,
        key,
        source,
        "is not valid: expected 'memory' or a redis://, rediss:// or unix:// URL",
    )


def parse_opt_url(value: Any, key: str, source: str) -> str | None:
    """A URL with a scheme (a message queue's: ``redis://host:6379/0``), or ``None`` if unset."""
    v = parse_opt_str(value, key, source)
    if v is None:
        return None
    start = _URL_START.match(v)
    if start is None or start.end() == len(v) or any(c.isspace() for c in v):
        raise _error(value, key, source, "is not a URL such as redis://host:6379/0")
    return v


#: The fewest characters a token (``DIAGLOG_DASHBOARD_TOKEN``, ``DIAGLOG_LIVE_TOKEN``) may have.
SECRET_MIN_LENGTH = 16


def parse_secret(value: Any, key: str, source: str) -> str | None:
    """A token of at least :data:`SECRET_MIN_LENGTH` characters (surrounding blanks not counted),
    or ``None`` when the key is unset. An empty string is refused rather than taken for "no
    token": a template's ``TOKEN=${UNSET}`` must not silently drop the protection. The error
    never shows the value, not even its length."""
    if value is None:
        return None
    token = parse_str(value, key, source)
    if len(token) < SECRET_MIN_LENGTH:
        short = ConfigError(
            f"{key}={MASK!r} (from {source}) is too short: a token needs at least "
            f"{SECRET_MIN_LENGTH} characters; make one with "
            "python -c 'import secrets; print(secrets.token_urlsafe(24))'"
        )
        short.masked = True
        raise short
    return token


#: A URL path of RFC 3986 path characters, without percent-escapes.
_URL_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@/-]*")


def parse_namespace(value: Any, key: str, source: str) -> str:
    v = parse_str(value, key, source)
    if not v.startswith("/"):
        raise _error(value, key, source, "must start with '/'")
    if _URL_PATH.fullmatch(v) is None:
        raise _error(
            value,
            key,
            source,
            "must be a URL path: letters, digits and - . _ ~ / (no spaces, '?', '#' or '%')",
        )
    return v


def parse_url_prefix(value: Any, key: str, source: str) -> str:
    """A path starting with ``/``, other than ``/`` itself, without its trailing slash."""
    prefix = parse_namespace(value, key, source).rstrip("/")
    if not prefix:
        raise _error(
            value,
            key,
            source,
            f"must be a prefix of its own, not the site's root (e.g. {DASHBOARD_URL!r})",
        )
    return prefix


def parse_prefixes(value: Any, key: str, source: str) -> tuple[str, ...]:
    """A list of URL path prefixes, each starting with ``/``."""
    prefixes = parse_list(value, key, source)
    for p in prefixes:
        if not p.startswith("/"):
            raise _error(
                value, key, source, f"has {p!r}, which is not a path: each must start with '/'"
            )
    return prefixes


# -- the keys ----------------------------------------------------------------------------------

#: Every key, in documentation order. The single declaration of the configuration.
