"""Configuration: the one declaration of every ``DIAGLOG_*`` key, and everything derived from it.

This module owns:

* :data:`KEYS`, one :class:`Key` per setting (name, ``Settings`` attribute, default, parser,
  documentation, whether it is secret). Nothing else declares a key: :data:`DEFAULTS`,
  :class:`Settings` construction, :func:`resolve`, the ``flask diaglog config`` listing and the
  docs table (:func:`markdown_table`) all come from it.
* Resolution. Every key is read once, in :meth:`DiagLog.init_app`. The value used is, in order of
  precedence:

  1. the environment variable of the same name (so operators can change behaviour without a
     deploy),
  2. ``app.config[key]``,
  3. the key's default.

  The parsed value is written back into ``app.config`` so it can be inspected, and is the value
  in :class:`Settings` (so parsing is idempotent: a written-back value parses to itself).
* Validation. An invalid value stops startup with a :class:`ConfigError` that names the key, where
  the value came from, and what is accepted.
* Display. :func:`shown` is how a value is printed anywhere (CLI, errors, dashboard): secrets and
  URL passwords are masked.
* :func:`log_dir`, the one way to find the log directory, and :func:`is_testing`, the one test-mode
  check.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULTS",
    "KEYS",
    "ConfigError",
    "Key",
    "Settings",
    "is_testing",
    "load_settings",
    "log_dir",
    "markdown_table",
    "parse_bool",
    "resolve",
    "shown",
]


class ConfigError(ValueError):
    """A ``DIAGLOG_*`` key (or the ``TESTING`` variable) has a value that is not accepted."""


@dataclass(frozen=True)
class Key:
    """The single declaration of one configuration key."""

    #: The config key and environment variable, e.g. ``"DIAGLOG_LOG_DIR"``.
    name: str
    #: The :class:`Settings` attribute that holds the parsed value, e.g. ``"log_dir"``.
    attr: str
    #: The raw default, parsed like any other value.
    default: Any
    #: ``parse(value, key, source)``: the parsed value, or a :class:`ConfigError` naming the key,
    #: the source and what is accepted. ``value`` may be ``None`` (a ``None`` in ``app.config``).
    parse: Callable[[Any, str, str], Any]
    #: One or two sentences (Markdown) for the documentation table.
    doc: str
    #: Never displayed: :func:`shown` prints ``'***'`` instead of the value.
    secret: bool = False


# -- display -----------------------------------------------------------------------------------

_MASK = "***"
_URL_START = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_QUERY_PASSWORD = re.compile(r"([?&;]password=)[^&;#]*", re.IGNORECASE)


def _mask_url(text: str) -> str:
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
            main = f"{user}:{_MASK}@{main[at + 1 :]}"
    return head + main + _QUERY_PASSWORD.sub(rf"\g<1>{_MASK}", tail)


def shown(key: Key | str, value: Any) -> str:
    """How ``value`` of ``key`` is displayed anywhere diaglog prints configuration.

    A secret key with a value prints ``'***'``; a URL's password (``redis://:pw@host``,
    ``?password=pw``) prints as ``***``; everything else is its ``repr``.
    """
    k = key if isinstance(key, Key) else _BY_NAME.get(key)
    if k is not None and k.secret and value is not None and value != "":
        return repr(_MASK)
    if isinstance(value, str):
        return repr(_mask_url(value))
    return repr(value)


def _error(value: Any, key: str, source: str, problem: str) -> ConfigError:
    """The one shape of a value error: ``KEY=<shown value> (from SOURCE) <problem>``."""
    return ConfigError(f"{key}={shown(key, value)} (from {source}) {problem}")


# -- parsers -----------------------------------------------------------------------------------

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
_LEVELS: dict[str, int] = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
}
_FORMATS = ("plain", "json")
_STORE_SCHEMES = ("redis://", "rediss://", "unix://")
_DASHBOARD_URL = "/_diaglog"
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


def _parse_int(value: Any, key: str, source: str, *, sizes: bool = False) -> int:
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
    if n < 0:
        raise _error(value, key, source, "must be 0 or more")
    return n


def _parse_size(value: Any, key: str, source: str) -> int:
    return _parse_int(value, key, source, sizes=True)


def _parse_float(value: Any, key: str, source: str) -> float:
    if isinstance(value, bool):
        raise _error(value, key, source, "must be a number of seconds")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise _error(value, key, source, "is not a number (seconds, fractions allowed)") from None
    if f < 0 or f != f:
        raise _error(value, key, source, "must be 0 or more")
    return f


def _parse_list(value: Any, key: str, source: str) -> tuple[str, ...]:
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


def _parse_format(value: Any, key: str, source: str) -> str:
    v = str(value).strip().lower()
    if v not in _FORMATS:
        raise _error(
            value,
            key,
            source,
            "is not valid: expected one of " + ", ".join(repr(c) for c in _FORMATS),
        )
    return v


def _parse_level(value: Any, key: str, source: str) -> int:
    """A level name (any case) to its number; a standard level number is kept as is."""
    if isinstance(value, int) and not isinstance(value, bool) and value in _LEVELS.values():
        return value
    name = str(value).strip().upper()
    if name not in _LEVELS:
        numbers = ", ".join(str(n) for n in _LEVELS.values())
        raise _error(
            value,
            key,
            source,
            "is not valid: expected one of "
            + ", ".join(repr(c) for c in _LEVELS)
            + f" (or its number: {numbers})",
        )
    return _LEVELS[name]


def _parse_str(value: Any, key: str, source: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _error(value, key, source, "must be a non-empty string")
    return value.strip()


def _parse_dir(value: Any, key: str, source: str) -> str:
    """A directory, made absolute against the current working directory."""
    return os.path.abspath(_parse_str(value, key, source))


def _parse_opt_str(value: Any, key: str, source: str) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _parse_str(value, key, source)


def _parse_opt_bool(value: Any, key: str, source: str) -> bool | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("auto", "")):
        return None
    return parse_bool(value, key, source)


def _parse_store(value: Any, key: str, source: str) -> str:
    v = _parse_str(value, key, source)
    if v.lower() == "memory":
        return "memory"
    if v.startswith(_STORE_SCHEMES):
        return v
    raise _error(
        value,
        key,
        source,
        "is not valid: expected 'memory' or a redis://, rediss:// or unix:// URL",
    )


def _parse_namespace(value: Any, key: str, source: str) -> str:
    v = _parse_str(value, key, source)
    if not v.startswith("/"):
        raise _error(value, key, source, "must start with '/'")
    return v


def _parse_url_prefix(value: Any, key: str, source: str) -> str:
    """A path starting with ``/``, without a trailing slash (``/`` alone means the default)."""
    return _parse_namespace(value, key, source).rstrip("/") or _DASHBOARD_URL


# -- the keys ----------------------------------------------------------------------------------

#: Every key, in documentation order. The single declaration of the configuration.
KEYS: tuple[Key, ...] = (
    Key(
        "DIAGLOG_ENABLED",
        "enabled",
        True,
        parse_bool,
        "Master switch. `False` registers nothing at all: no hooks, headers, files or handlers.",
    ),
    Key(
        "DIAGLOG_LOG_DIR",
        "log_dir",
        "logs",
        _parse_dir,
        "Directory of `requests.log`, `jobs.log` and `errors.log` (relative to the working "
        "directory; created if missing).",
    ),
    Key(
        "DIAGLOG_FORMAT",
        "format",
        "plain",
        _parse_format,
        "Format of the log lines: `plain` or `json`.",
    ),
    Key(
        "DIAGLOG_LEVEL",
        "level",
        "INFO",
        _parse_level,
        "Minimum level written to the files (`DEBUG`, `INFO`, `WARNING`, `ERROR`, `CRITICAL`).",
    ),
    Key(
        "DIAGLOG_MAX_BYTES",
        "max_bytes",
        10 * 1024 * 1024,
        _parse_size,
        "Rotate a file once it reaches this size; `0` = never. Accepts `256KiB`, `10MiB`, `1GB`.",
    ),
    Key(
        "DIAGLOG_BACKUP_COUNT",
        "backup_count",
        5,
        _parse_int,
        "Rotated files kept per log file.",
    ),
    Key(
        "DIAGLOG_COMPRESS",
        "compress",
        False,
        parse_bool,
        "Gzip rotated backups in a background thread.",
    ),
    Key(
        "DIAGLOG_CONSOLE",
        "console",
        False,
        parse_bool,
        "Echo every line to stdout through a bounded queue that never blocks.",
    ),
    Key(
        "DIAGLOG_EXCLUDE",
        "exclude",
        (),
        _parse_list,
        "Comma-separated path prefixes that are not logged at all, e.g. `/static,/healthz`.",
    ),
    Key(
        "DIAGLOG_REDACT",
        "redact",
        ("password", "passwd", "secret", "token", "api_key", "apikey"),
        _parse_list,
        "Key name fragments whose values are masked (case-insensitive substring match).",
    ),
    Key(
        "DIAGLOG_SERVER_TIMING",
        "server_timing",
        True,
        parse_bool,
        "Add a `Server-Timing` header with every stage and `total`.",
    ),
    Key(
        "DIAGLOG_LOGGERS",
        "loggers",
        (),
        _parse_list,
        "Loggers whose records are captured into the files. Empty = the app's logger and the "
        "top-level package of `app.import_name`; `root` = everything.",
    ),
    Key(
        "DIAGLOG_JOB_STORE",
        "job_store",
        "memory",
        _parse_store,
        "`memory`, or a `redis://`, `rediss://` or `unix://` URL shared by all processes.",
    ),
    Key(
        "DIAGLOG_JOB_TTL",
        "job_ttl",
        30.0,
        _parse_float,
        "Seconds a job lease lives without renewal (it is renewed while the work runs); more "
        "than `0`.",
    ),
    Key(
        "DIAGLOG_JOB_REPLAY_TTL",
        "job_replay_ttl",
        600.0,
        _parse_float,
        "Seconds a finished response is kept for `Idempotency-Key` replay (`0` = none).",
    ),
    Key(
        "DIAGLOG_JOB_FAIL_OPEN",
        "job_fail_open",
        False,
        parse_bool,
        "When the job store is unreachable, let guarded requests through with a WARNING instead "
        "of answering 503.",
    ),
    Key(
        "DIAGLOG_LIVE",
        "live",
        None,
        _parse_opt_bool,
        "Live Socket.IO events. `None` (or `auto`) = on when a SocketIO is given, off in test "
        "mode.",
    ),
    Key(
        "DIAGLOG_LIVE_QUEUE",
        "live_queue",
        None,
        _parse_opt_str,
        "Message queue URL (`redis://...`) for live events from several worker processes.",
    ),
    Key(
        "DIAGLOG_LIVE_TOKEN",
        "live_token",
        None,
        _parse_opt_str,
        "Token live clients must send in their Socket.IO `auth` payload.",
        secret=True,
    ),
    Key(
        "DIAGLOG_LIVE_NAMESPACE",
        "live_namespace",
        "/diaglog",
        _parse_namespace,
        "Socket.IO namespace of the live events.",
    ),
    Key(
        "DIAGLOG_HANG_AFTER",
        "hang_after",
        30.0,
        _parse_float,
        "Seconds (fractions allowed) after which in-flight work is reported as hung; `0` = off.",
    ),
    Key(
        "DIAGLOG_SLOW_MS",
        "slow_ms",
        5000,
        _parse_float,
        "Requests at least this slow (milliseconds) log their end line at WARNING; `0` = off.",
    ),
    Key(
        "DIAGLOG_DASHBOARD",
        "dashboard",
        False,
        parse_bool,
        "Serve the in-flight/recent-requests dashboard (opt-in).",
    ),
    Key(
        "DIAGLOG_DASHBOARD_URL",
        "dashboard_url",
        _DASHBOARD_URL,
        _parse_url_prefix,
        "URL prefix of the dashboard (never logged).",
    ),
    Key(
        "DIAGLOG_DASHBOARD_TOKEN",
        "dashboard_token",
        None,
        _parse_opt_str,
        "Token the dashboard requires; without one it answers loopback clients only.",
        secret=True,
    ),
)

_BY_NAME: dict[str, Key] = {k.name: k for k in KEYS}

#: The raw default of every key (derived from :data:`KEYS`; kept for compatibility).
DEFAULTS: dict[str, Any] = {k.name: k.default for k in KEYS}


@dataclass(frozen=True)
class Settings:
    """The resolved, validated configuration of one app. Read once at ``init_app``.

    One attribute per :class:`Key` (its ``attr``), plus ``testing`` from :func:`is_testing`.
    """

    enabled: bool
    log_dir: str
    format: str
    level: int
    max_bytes: int
    backup_count: int
    compress: bool
    console: bool
    exclude: tuple[str, ...]
    redact: tuple[str, ...]
    server_timing: bool
    loggers: tuple[str, ...]
    job_store: str
    job_ttl: float
    job_replay_ttl: float
    job_fail_open: bool
    live: bool | None
    live_queue: str | None
    live_token: str | None
    live_namespace: str
    hang_after: float
    slow_ms: float
    dashboard: bool
    dashboard_url: str
    dashboard_token: str | None
    testing: bool


# -- resolution --------------------------------------------------------------------------------


def _resolve_key(key: Key, config: Mapping[str, Any], environ: Mapping[str, str]) -> Any:
    """One key: environment first, then ``config``, then the default; parsed."""
    name = key.name
    if name in environ:
        return key.parse(environ[name], name, f"environment variable {name}")
    if name in config:
        return key.parse(config[name], name, f"app.config[{name!r}]")
    return key.parse(key.default, name, "default")


def resolve(config: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Resolve every key: environment first, then ``config``, then the default. Validates all."""
    out = {key.name: _resolve_key(key, config, environ) for key in KEYS}
    ttl = out["DIAGLOG_JOB_TTL"]
    if ttl <= 0:
        raise ConfigError(f"DIAGLOG_JOB_TTL={shown('DIAGLOG_JOB_TTL', ttl)} must be more than 0")
    return out


def load_settings(app: Any, environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve the configuration of ``app``, write it back to ``app.config`` and return it."""
    values = resolve(app.config, os.environ if environ is None else environ)
    app.config.update(values)
    return Settings(**{key.attr: values[key.name] for key in KEYS}, testing=is_testing(app))


def log_dir(
    config: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> str:
    """The absolute log directory, resolved exactly as the writer resolves it.

    ``DIAGLOG_LOG_DIR`` from ``environ`` (default ``os.environ``), else from ``config`` (e.g.
    ``app.config``), else the default. Raises :class:`ConfigError` for an invalid value.
    """
    env = os.environ if environ is None else environ
    path: str = _resolve_key(_BY_NAME["DIAGLOG_LOG_DIR"], config or {}, env)
    return path


def markdown_table() -> str:
    """The configuration table for the docs: key, default (as :func:`shown`), what it does."""
    rows = ["| key | default | what it does |", "|---|---|---|"]
    for key in KEYS:
        default = shown(key, key.default).replace("|", "\\|")
        doc = key.doc.replace("|", "\\|")
        rows.append(f"| `{key.name}` | `{default}` | {doc} |")
    return "\n".join(rows) + "\n"
