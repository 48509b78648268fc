"""Configuration: the ``DIAGLOG_*`` keys, their defaults, environment overrides and validation.

Every key is read once, in :meth:`DiagLog.init_app`. The value used is, in order of precedence:

1. the environment variable of the same name (so operators can change behaviour without a deploy),
2. ``app.config[key]``,
3. the default below.

The resolved value is written back into ``app.config`` so it can be inspected. Invalid values stop
startup with a :class:`ConfigError` that names the key, where the value came from, and what is
accepted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULTS", "ConfigError", "Settings", "is_testing", "load_settings", "parse_bool"]


class ConfigError(ValueError):
    """A ``DIAGLOG_*`` key (or the ``TESTING`` variable) has a value that is not accepted."""


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})

#: Defaults for every key. Documented in the README's configuration table.
DEFAULTS: dict[str, Any] = {
    #: Master switch. ``False`` registers nothing at all.
    "DIAGLOG_ENABLED": True,
    #: Directory for ``requests.log``, ``jobs.log`` and ``errors.log``. Created if missing.
    "DIAGLOG_LOG_DIR": "logs",
    #: ``plain`` or ``json``.
    "DIAGLOG_FORMAT": "plain",
    #: Minimum level written to the files (``DEBUG``, ``INFO``, ``WARNING``, ``ERROR``).
    "DIAGLOG_LEVEL": "INFO",
    #: Rotate a file once it reaches this size. ``0`` disables rotation. Accepts ``10MiB`` style.
    "DIAGLOG_MAX_BYTES": 10 * 1024 * 1024,
    #: Rotated files kept per log file.
    "DIAGLOG_BACKUP_COUNT": 5,
    #: Gzip rotated backups in a background thread.
    "DIAGLOG_COMPRESS": False,
    #: Echo every line to stdout through a bounded, non-blocking queue.
    "DIAGLOG_CONSOLE": False,
    #: Path prefixes that are not logged at all, e.g. ``/static,/healthz``.
    "DIAGLOG_EXCLUDE": (),
    #: Key name fragments whose values are redacted (case-insensitive substring match).
    "DIAGLOG_REDACT": ("password", "passwd", "secret", "token", "api_key", "apikey"),
    #: Add a ``Server-Timing`` header with every stage and ``total``.
    "DIAGLOG_SERVER_TIMING": True,
    #: Loggers whose records are captured into the files. Empty means the app's logger and the
    #: top-level package of ``app.import_name``. ``root`` captures everything.
    "DIAGLOG_LOGGERS": (),
    #: ``memory`` or a ``redis://``, ``rediss://`` or ``unix://`` URL.
    "DIAGLOG_JOB_STORE": "memory",
    #: Seconds a job lease lives without renewal (it is renewed while the work runs).
    "DIAGLOG_JOB_TTL": 30.0,
    #: Seconds a finished response is kept for ``Idempotency-Key`` replay.
    "DIAGLOG_JOB_REPLAY_TTL": 600.0,
    #: When the job store is unreachable, let guarded requests through (with a WARNING line).
    "DIAGLOG_JOB_FAIL_OPEN": False,
    #: Live Socket.IO events. ``None`` means: on when a SocketIO is given, off in test mode.
    "DIAGLOG_LIVE": None,
    #: Message queue URL for live events from several worker processes.
    "DIAGLOG_LIVE_QUEUE": None,
    #: Token that live clients must present in their Socket.IO ``auth`` payload.
    "DIAGLOG_LIVE_TOKEN": None,
    #: Socket.IO namespace of the live events.
    "DIAGLOG_LIVE_NAMESPACE": "/diaglog",
    #: Seconds after which in-flight work is reported as hung (fractions allowed, ``0`` = off).
    "DIAGLOG_HANG_AFTER": 30.0,
    #: Requests at least this slow log their end line at WARNING (``0`` = off).
    "DIAGLOG_SLOW_MS": 5000,
    #: Serve the in-flight/recent-requests dashboard (opt-in).
    "DIAGLOG_DASHBOARD": False,
    #: URL prefix of the dashboard (never logged).
    "DIAGLOG_DASHBOARD_URL": "/_diaglog",
    #: Token the dashboard requires; without one it answers loopback clients only.
    "DIAGLOG_DASHBOARD_TOKEN": None,
}

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_FORMATS = ("plain", "json")
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
    raise ConfigError(
        f"{key}={value!r} (from {source}) is not a boolean: "
        "use one of 1/true/yes/on or 0/false/no/off (case-insensitive)"
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
        raise ConfigError(f"{key}={value!r} (from {source}) must be a whole number, not a boolean")
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
            raise ConfigError(
                f"{key}={value!r} (from {source}) is not a whole number{hint}"
            ) from None
    else:
        raise ConfigError(f"{key}={value!r} (from {source}) must be a whole number")
    if n < 0:
        raise ConfigError(f"{key}={value!r} (from {source}) must be 0 or more")
    return n


def _parse_float(value: Any, key: str, source: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} (from {source}) must be a number of seconds")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{key}={value!r} (from {source}) is not a number (seconds, fractions allowed)"
        ) from None
    if f < 0 or f != f:
        raise ConfigError(f"{key}={value!r} (from {source}) must be 0 or more")
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
                raise ConfigError(f"{key}={value!r} (from {source}) must be a list of strings")
            out.append(item)
        return tuple(out)
    raise ConfigError(f"{key}={value!r} (from {source}) must be a comma-separated string or a list")


def _parse_choice(
    choices: tuple[str, ...], *, upper: bool = False
) -> Callable[[Any, str, str], str]:
    def parse(value: Any, key: str, source: str) -> str:
        v = str(value).strip()
        v = v.upper() if upper else v.lower()
        if v not in choices:
            raise ConfigError(
                f"{key}={value!r} (from {source}) is not valid: expected one of "
                + ", ".join(repr(c) for c in choices)
            )
        return v

    return parse


def _parse_str(value: Any, key: str, source: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}={value!r} (from {source}) must be a non-empty string")
    return value.strip()


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
    if v.startswith(("redis://", "rediss://", "unix://")):
        return v
    raise ConfigError(
        f"{key}={value!r} (from {source}) is not valid: expected 'memory' or a "
        "redis://, rediss:// or unix:// URL"
    )


def _parse_namespace(value: Any, key: str, source: str) -> str:
    v = _parse_str(value, key, source)
    if not v.startswith("/"):
        raise ConfigError(f"{key}={value!r} (from {source}) must start with '/'")
    return v


_PARSERS: dict[str, Callable[[Any, str, str], Any]] = {
    "DIAGLOG_ENABLED": parse_bool,
    "DIAGLOG_LOG_DIR": _parse_str,
    "DIAGLOG_FORMAT": _parse_choice(_FORMATS),
    "DIAGLOG_LEVEL": _parse_choice(_LEVELS, upper=True),
    "DIAGLOG_MAX_BYTES": lambda v, k, s: _parse_int(v, k, s, sizes=True),
    "DIAGLOG_BACKUP_COUNT": _parse_int,
    "DIAGLOG_COMPRESS": parse_bool,
    "DIAGLOG_CONSOLE": parse_bool,
    "DIAGLOG_EXCLUDE": _parse_list,
    "DIAGLOG_REDACT": _parse_list,
    "DIAGLOG_SERVER_TIMING": parse_bool,
    "DIAGLOG_LOGGERS": _parse_list,
    "DIAGLOG_JOB_STORE": _parse_store,
    "DIAGLOG_JOB_TTL": _parse_float,
    "DIAGLOG_JOB_REPLAY_TTL": _parse_float,
    "DIAGLOG_JOB_FAIL_OPEN": parse_bool,
    "DIAGLOG_LIVE": _parse_opt_bool,
    "DIAGLOG_LIVE_QUEUE": _parse_opt_str,
    "DIAGLOG_LIVE_TOKEN": _parse_opt_str,
    "DIAGLOG_LIVE_NAMESPACE": _parse_namespace,
    "DIAGLOG_HANG_AFTER": _parse_float,
    "DIAGLOG_SLOW_MS": _parse_float,
    "DIAGLOG_DASHBOARD": parse_bool,
    "DIAGLOG_DASHBOARD_URL": _parse_namespace,
    "DIAGLOG_DASHBOARD_TOKEN": _parse_opt_str,
}


@dataclass(frozen=True)
class Settings:
    """The resolved, validated configuration of one app. Read once at ``init_app``."""

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


def resolve(config: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Resolve every key: environment first, then ``config``, then the default. Validates all."""
    out: dict[str, Any] = {}
    for key, default in DEFAULTS.items():
        if key in environ:
            raw: Any = environ[key]
            source = f"environment variable {key}"
        elif key in config:
            raw = config[key]
            source = f"app.config[{key!r}]"
        else:
            raw = default
            source = "default"
        out[key] = _PARSERS[key](raw, key, source) if raw is not None else None
    if out["DIAGLOG_JOB_TTL"] <= 0:
        raise ConfigError(f"DIAGLOG_JOB_TTL={out['DIAGLOG_JOB_TTL']!r} must be more than 0")
    return out


def load_settings(app: Any, environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve the configuration of ``app``, write it back to ``app.config`` and return it."""
    env = os.environ if environ is None else environ
    values = resolve(app.config, env)
    app.config.update(values)
    testing = is_testing(app)
    log_dir = os.path.abspath(values["DIAGLOG_LOG_DIR"])
    return Settings(
        enabled=values["DIAGLOG_ENABLED"],
        log_dir=log_dir,
        format=values["DIAGLOG_FORMAT"],
        level=logging.getLevelName(values["DIAGLOG_LEVEL"]),
        max_bytes=values["DIAGLOG_MAX_BYTES"],
        backup_count=values["DIAGLOG_BACKUP_COUNT"],
        compress=values["DIAGLOG_COMPRESS"],
        console=values["DIAGLOG_CONSOLE"],
        exclude=values["DIAGLOG_EXCLUDE"],
        redact=values["DIAGLOG_REDACT"],
        server_timing=values["DIAGLOG_SERVER_TIMING"],
        loggers=values["DIAGLOG_LOGGERS"],
        job_store=values["DIAGLOG_JOB_STORE"],
        job_ttl=values["DIAGLOG_JOB_TTL"],
        job_replay_ttl=values["DIAGLOG_JOB_REPLAY_TTL"],
        job_fail_open=values["DIAGLOG_JOB_FAIL_OPEN"],
        live=values["DIAGLOG_LIVE"],
        live_queue=values["DIAGLOG_LIVE_QUEUE"],
        live_token=values["DIAGLOG_LIVE_TOKEN"],
        live_namespace=values["DIAGLOG_LIVE_NAMESPACE"],
        hang_after=values["DIAGLOG_HANG_AFTER"],
        slow_ms=values["DIAGLOG_SLOW_MS"],
        dashboard=values["DIAGLOG_DASHBOARD"],
        dashboard_url=values["DIAGLOG_DASHBOARD_URL"].rstrip("/") or "/_diaglog",
        dashboard_token=values["DIAGLOG_DASHBOARD_TOKEN"],
        testing=testing,
    )
