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

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .values import (
    DASHBOARD_URL,
    MASK,
    ConfigError,
    is_testing,
    mask_url,
    parse_bool,
    parse_count,
    parse_dir,
    parse_float,
    parse_format,
    parse_int,
    parse_level,
    parse_list,
    parse_namespace,
    parse_opt_bool,
    parse_opt_url,
    parse_prefixes,
    parse_secret,
    parse_size,
    parse_store,
    parse_ttl,
    parse_url_prefix,
)

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


def shown(key: Key | str, value: Any) -> str:
    """How ``value`` of ``key`` is displayed anywhere diaglog prints configuration.

    A secret key with a value prints ``'***'``; a URL's password (``redis://:pw@host``,
    ``?password=pw``) prints as ``***``; everything else is its ``repr``.
    """
    k = key if isinstance(key, Key) else _BY_NAME.get(key)
    if k is not None and k.secret and value is not None and value != "":
        return repr(MASK)
    if isinstance(value, str):
        return repr(mask_url(value))
    return repr(value)


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
        parse_dir,
        "Directory of `requests.log`, `jobs.log` and `errors.log` (relative to the working "
        "directory; created if missing).",
    ),
    Key(
        "DIAGLOG_FORMAT",
        "format",
        "plain",
        parse_format,
        "Format of the log lines: `plain` or `json`.",
    ),
    Key(
        "DIAGLOG_LEVEL",
        "level",
        "INFO",
        parse_level,
        "Minimum level written to the files (`DEBUG`, `INFO`, `WARNING`, `ERROR`, `CRITICAL`).",
    ),
    Key(
        "DIAGLOG_MAX_BYTES",
        "max_bytes",
        10 * 1024 * 1024,
        parse_size,
        "Rotate a file once it reaches this size; `0` = never. Accepts `256KiB`, `10MiB`, `1GB`.",
    ),
    Key(
        "DIAGLOG_BACKUP_COUNT",
        "backup_count",
        5,
        parse_int,
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
        parse_prefixes,
        "Comma-separated path prefixes whose requests are not logged at all, e.g. "
        "`/static,/healthz` (background work they start is, as a job without their ids).",
    ),
    Key(
        "DIAGLOG_REDACT",
        "redact",
        ("password", "passwd", "secret", "token", "api_key", "apikey"),
        parse_list,
        "Key-name fragments whose values are masked (any case; `-`, `_`, `.` ignored), on top of "
        "the always-secret authorization, cookie, apikey, credential and signature; see the "
        "security page.",
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
        parse_list,
        "Loggers whose records are captured into the files, with their children. Empty (or "
        "`root`) = every logger; a list narrows the capture to those loggers.",
    ),
    Key(
        "DIAGLOG_ADJUST_LEVELS",
        "adjust_levels",
        True,
        parse_bool,
        "Lower the captured loggers (the root logger unless `DIAGLOG_LOGGERS` lists others) to "
        "just below `DIAGLOG_LEVEL` when their level is higher, so records of loggers nobody "
        "configured are captured. Records that exist only because of this reach diaglog alone, "
        "never your handlers. `False`: levels are left as they are.",
    ),
    Key(
        "DIAGLOG_REPLACE_HANDLERS",
        "replace_handlers",
        True,
        parse_bool,
        "Replace Flask's default stderr handler, werkzeug's request log handler and "
        "`logging.lastResort` with stand-ins that print the same text, redacted, through a queue "
        "that never blocks. `False`: keep the originals (they write synchronously).",
    ),
    Key(
        "DIAGLOG_JOB_STORE",
        "job_store",
        "memory",
        parse_store,
        "`memory`, or a `redis://`, `rediss://` or `unix://` URL shared by all processes.",
    ),
    Key(
        "DIAGLOG_JOB_TTL",
        "job_ttl",
        30.0,
        parse_ttl,
        "Seconds a job lease lives without renewal (it is renewed while the work runs); at "
        "least `0.1`.",
    ),
    Key(
        "DIAGLOG_JOB_REPLAY_TTL",
        "job_replay_ttl",
        600.0,
        parse_float,
        "Seconds a finished response is kept for `Idempotency-Key` replay (`0` = none).",
    ),
    Key(
        "DIAGLOG_JOB_REPLAY_MAX_ENTRIES",
        "job_replay_max_entries",
        10_000,
        parse_int,
        "Most stored responses kept for replay in memory; the oldest is evicted first.",
    ),
    Key(
        "DIAGLOG_JOB_REPLAY_MAX_BYTES",
        "job_replay_max_bytes",
        "64MiB",
        parse_size,
        "Most bytes of stored response bodies kept for replay in memory; the oldest go first.",
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
        parse_opt_bool,
        "Live Socket.IO events. `None` (or `auto`) = on when a SocketIO is given, off in test "
        "mode.",
    ),
    Key(
        "DIAGLOG_LIVE_QUEUE",
        "live_queue",
        None,
        parse_opt_url,
        "Message queue URL (`redis://...`) for live events from several worker processes.",
    ),
    Key(
        "DIAGLOG_LIVE_TOKEN",
        "live_token",
        None,
        parse_secret,
        "Token live clients must send in their Socket.IO `auth` payload.",
        secret=True,
    ),
    Key(
        "DIAGLOG_LIVE_NAMESPACE",
        "live_namespace",
        "/diaglog",
        parse_namespace,
        "Socket.IO namespace of the live events.",
    ),
    Key(
        "DIAGLOG_LIVE_MAX_ROOMS",
        "live_max_rooms",
        100,
        parse_count,
        "Most rooms one live client may be in at once (at least `1`); a `subscribe` beyond it is "
        "refused.",
    ),
    Key(
        "DIAGLOG_HANG_AFTER",
        "hang_after",
        30.0,
        parse_float,
        "Seconds (fractions allowed) after which in-flight work is reported as hung; `0` = off.",
    ),
    Key(
        "DIAGLOG_SHUTDOWN_GRACE",
        "shutdown_grace",
        25.0,
        parse_float,
        "Seconds a stopping process waits for running background jobs, and for requests that "
        "daemon threads serve (`flask run`), `0` = no wait. One still running after it gets its "
        "end line marked aborted. Keep it below your server's own limit (gunicorn's "
        "`--graceful-timeout`, 30 s by default).",
    ),
    Key(
        "DIAGLOG_STRICT_IDS",
        "strict_ids",
        False,
        parse_bool,
        "Answer 400 to an invalid job id on every route, not only on `@guard_job` views. Off: an "
        "invalid id is recorded in `bad_job_id` and never changes a response.",
    ),
    Key(
        "DIAGLOG_TRUST_REQUEST_ID",
        "trust_request_id",
        True,
        parse_bool,
        "Use a valid incoming `X-Request-ID` as the request id. Turn off when clients reach the "
        "app directly: every request then gets a fresh unpredictable id.",
    ),
    Key(
        "DIAGLOG_PROGRESS_INTERVAL",
        "progress_interval",
        0.5,
        parse_float,
        "Least seconds between two `progress` lines of one request or job. The first report and "
        "a finished `1.0` are always written; the latest value is always shown in flight.",
    ),
    Key(
        "DIAGLOG_SLOW_MS",
        "slow_ms",
        5000,
        parse_float,
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
        DASHBOARD_URL,
        parse_url_prefix,
        "URL prefix of the dashboard (never logged).",
    ),
    Key(
        "DIAGLOG_DASHBOARD_TOKEN",
        "dashboard_token",
        None,
        parse_secret,
        "Token the dashboard requires; without one it answers loopback clients that name a "
        "loopback host only.",
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
    adjust_levels: bool
    replace_handlers: bool
    job_store: str
    job_ttl: float
    job_replay_ttl: float
    job_replay_max_entries: int
    job_replay_max_bytes: int
    job_fail_open: bool
    live: bool | None
    live_queue: str | None
    live_token: str | None
    live_namespace: str
    live_max_rooms: int
    hang_after: float
    shutdown_grace: float
    strict_ids: bool
    trust_request_id: bool
    progress_interval: float
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
        value, source = environ[name], f"environment variable {name}"
    elif name in config:
        value, source = config[name], f"app.config[{name!r}]"
    else:
        value, source = key.default, "default"
    try:
        return key.parse(value, name, source)
    except ConfigError as exc:
        if not key.secret or exc.masked:
            raise  # not a secret, or its parser masked the value itself (a short token)
        # A secret's value never appears in an error, not even in part.
        raise ConfigError(
            f"{name}={MASK!r} (from {source}) is not valid: it must be a non-empty string "
            "(leave the key unset for no token)"
        ) from None


def resolve(config: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Resolve every key: environment first, then ``config``, then the default. Validates all."""
    return {key.name: _resolve_key(key, config, environ) for key in KEYS}


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
