"""Configuration: defaults, environment overrides, validation errors that name the key."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from flask_diaglog import ConfigError, DiagLog, is_testing
from flask_diaglog.cli import diaglog_cli
from flask_diaglog.config import (
    DEFAULTS,
    KEYS,
    Settings,
    load_settings,
    log_dir,
    markdown_table,
    resolve,
    shown,
)


def test_defaults_are_written_back_to_app_config(make_app: Callable[..., Flask]) -> None:
    """Every DIAGLOG_* key shows its resolved value in app.config after init."""
    app = make_app()
    for key in DEFAULTS:
        assert key in app.config, key
    assert app.config["DIAGLOG_FORMAT"] == "plain"
    assert app.config["DIAGLOG_MAX_BYTES"] == 10 * 1024 * 1024
    assert app.config["DIAGLOG_BACKUP_COUNT"] == 5
    assert app.config["DIAGLOG_SERVER_TIMING"] is True


def test_environment_overrides_app_config(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch, logs: object
) -> None:
    """An environment variable of the same name wins over app.config."""
    monkeypatch.setenv("DIAGLOG_FORMAT", "json")
    monkeypatch.setenv("DIAGLOG_MAX_BYTES", "2MiB")
    monkeypatch.setenv("DIAGLOG_EXCLUDE", "/static, /healthz")
    app = make_app({"DIAGLOG_FORMAT": "plain"})
    assert app.config["DIAGLOG_FORMAT"] == "json"
    assert app.config["DIAGLOG_MAX_BYTES"] == 2 * 1024 * 1024
    assert app.config["DIAGLOG_EXCLUDE"] == ("/static", "/healthz")


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("DIAGLOG_MAX_BYTES", "ten", "DIAGLOG_MAX_BYTES='ten'"),
        ("DIAGLOG_FORMAT", "xml", "expected one of 'plain', 'json'"),
        ("DIAGLOG_LEVEL", "LOUD", "'DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL'"),
        ("DIAGLOG_ENABLED", "maybe", "1/true/yes/on or 0/false/no/off"),
        ("DIAGLOG_BACKUP_COUNT", "-1", "must be 0 or more"),
        ("DIAGLOG_HANG_AFTER", "soon", "DIAGLOG_HANG_AFTER='soon'"),
        ("DIAGLOG_JOB_STORE", "postgres://x", "'memory' or a redis://"),
        ("DIAGLOG_JOB_STORE", "unix://", "socket's path"),
        ("DIAGLOG_SHUTDOWN_GRACE", "inf", "must be at most 1000000000"),
        ("DIAGLOG_HANG_AFTER", "nan", "must be 0 or more"),
        ("DIAGLOG_JOB_TTL", "1e300", "must be at most 1000000000"),
        ("DIAGLOG_JOB_TTL", "1e-9", "must be at least 0.1"),
        ("DIAGLOG_JOB_TTL", "0", "must be at least 0.1"),
        ("DIAGLOG_LEVEL", "25", "(or its number: 10, 20, 30, 40, 50)"),
        ("DIAGLOG_JOB_STORE", "redis://:pw@h:notaport/0", "port that is not a number"),
        ("DIAGLOG_JOB_STORE", "redis://h:99999/0", "port that is not a number"),
        ("DIAGLOG_DASHBOARD_TOKEN", "", "non-empty string (leave the key unset for no token)"),
        ("DIAGLOG_LIVE_TOKEN", "  ", "non-empty string (leave the key unset for no token)"),
        ("DIAGLOG_DASHBOARD_URL", "/x?y", "must be a URL path"),
        ("DIAGLOG_DASHBOARD_URL", "/a b", "must be a URL path"),
        ("DIAGLOG_DASHBOARD_URL", "/", "not the site's root"),
        ("DIAGLOG_LIVE_NAMESPACE", "/a b", "must be a URL path"),
        ("DIAGLOG_LIVE_QUEUE", "notaurl", "is not a URL such as redis://host:6379/0"),
        ("DIAGLOG_LIVE_QUEUE", "redis:/x", "is not a URL such as redis://host:6379/0"),
        ("DIAGLOG_EXCLUDE", "/static,healthz", "has 'healthz', which is not a path"),
    ],
)
def test_invalid_env_value_names_key_and_accepted_values(
    make_app: Callable[..., Flask],
    monkeypatch: pytest.MonkeyPatch,
    key: str,
    value: str,
    expected: str,
) -> None:
    """A bad environment value stops startup with an error naming the key, source and choices."""
    monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as info:
        make_app()
    message = str(info.value)
    assert key in message
    assert f"environment variable {key}" in message
    assert expected in message


@pytest.mark.parametrize(("value", "level"), [("20", 20), (" 40 ", 40), ("warning", 30)])
def test_a_level_from_the_environment_may_be_its_number(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch, value: str, level: int
) -> None:
    """``DIAGLOG_LEVEL=20`` in the environment is INFO, as the error message says it may be."""
    monkeypatch.setenv("DIAGLOG_LEVEL", value)
    assert make_app().config["DIAGLOG_LEVEL"] == level


def test_invalid_app_config_value_names_key(make_app: Callable[..., Flask]) -> None:
    """A bad app.config value is reported with app.config as its source."""
    with pytest.raises(ConfigError, match=r"DIAGLOG_FORMAT='yaml' \(from app.config"):
        make_app({"DIAGLOG_FORMAT": "yaml"})


def test_size_suffixes_are_accepted(make_app: Callable[..., Flask]) -> None:
    """DIAGLOG_MAX_BYTES accepts 256KiB-style sizes."""
    app = make_app({"DIAGLOG_MAX_BYTES": "256KiB"})
    assert app.config["DIAGLOG_MAX_BYTES"] == 256 * 1024


def test_disabled_registers_nothing(make_app: Callable[..., Flask], log_dir: Path) -> None:
    """DIAGLOG_ENABLED=False: no hooks, no headers, no files, no handlers."""
    app = make_app({"DIAGLOG_ENABLED": False})

    @app.get("/")
    def index() -> str:
        app.logger.warning("hello")
        return "ok"

    handlers_before = list(app.logger.handlers)
    r = app.test_client().get("/")
    assert r.status_code == 200
    assert "X-Request-ID" not in r.headers
    assert "Server-Timing" not in r.headers
    assert not log_dir.exists()
    assert app.before_request_funcs.get(None, []) == []
    assert app.logger.handlers == handlers_before


def test_disabled_from_environment(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch, log_dir: Path
) -> None:
    """DIAGLOG_ENABLED=0 in the environment turns everything off too."""
    monkeypatch.setenv("DIAGLOG_ENABLED", "0")
    app = make_app()
    app.add_url_rule("/", view_func=lambda: "ok")
    assert "X-Request-ID" not in app.test_client().get("/").headers
    assert not log_dir.exists()


@pytest.mark.parametrize(
    ("env", "config", "expected"),
    [
        (None, False, False),
        (None, True, True),
        ("1", False, True),
        ("TRUE", False, True),
        ("on", False, True),
        ("yes", False, True),
        ("0", False, False),
        ("off", True, True),
        ("", False, False),
        ("No", False, False),
    ],
)
def test_is_testing_reads_env_and_app_config(
    monkeypatch: pytest.MonkeyPatch, env: str | None, config: bool, expected: bool
) -> None:
    """Test mode is on when TESTING (env, case-insensitive) or app.config['TESTING'] says so."""
    if env is not None:
        monkeypatch.setenv("TESTING", env)
    app = Flask(__name__)
    app.config["TESTING"] = config
    assert is_testing(app) is expected


def test_invalid_testing_env_is_a_startup_error(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    """TESTING=maybe stops startup with an error that names the variable."""
    monkeypatch.setenv("TESTING", "maybe")
    with pytest.raises(ConfigError, match="TESTING='maybe'"):
        make_app()


def test_testing_flag_is_on_the_start_line(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch, logs: object
) -> None:
    """The start line carries the testing flag decided by is_testing()."""
    app = make_app({"TESTING": False, "DIAGLOG_FORMAT": "json"})
    app.add_url_rule("/", view_func=lambda: "ok")
    app.test_client().get("/")
    monkeypatch.setenv("TESTING", "1")
    app2 = make_app({"TESTING": False, "DIAGLOG_FORMAT": "json"})
    app2.add_url_rule("/", view_func=lambda: "ok")
    app2.test_client().get("/")
    starts = logs.events("requests", "request_start")  # type: ignore[attr-defined]
    assert [s["testing"] for s in starts] == [False, True]


def test_unwritable_log_dir_is_a_clear_startup_error(tmp_path: Path) -> None:
    """A log dir that cannot be created names DIAGLOG_LOG_DIR in the error."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    app = Flask(__name__)
    app.config["DIAGLOG_LOG_DIR"] = str(blocker / "logs")
    with pytest.raises(ConfigError, match="DIAGLOG_LOG_DIR"):
        DiagLog(app)


def test_level_filters_lines(make_app: Callable[..., Flask], logs: object) -> None:
    """DIAGLOG_LEVEL=WARNING keeps INFO request lines out of the files."""
    app = make_app({"DIAGLOG_LEVEL": "WARNING"})

    @app.get("/")
    def index() -> str:
        app.logger.info("quiet")
        app.logger.warning("loud")
        return "ok"

    app.test_client().get("/")
    text = logs.text("requests")  # type: ignore[attr-defined]
    assert "request_start" not in text
    assert "quiet" not in text
    assert "loud" in text


def test_every_settings_field_has_exactly_one_key() -> None:
    """Each Settings field but `testing` is one Key's attr, and each Key names one field."""
    attrs = [key.attr for key in KEYS]
    assert len(attrs) == len(set(attrs))
    assert len({key.name for key in KEYS}) == len(KEYS)
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert set(attrs) == fields - {"testing"}


def test_defaults_are_the_keys_defaults() -> None:
    """DEFAULTS is derived from KEYS: same keys, same order, same values."""
    assert list(DEFAULTS.items()) == [(key.name, key.default) for key in KEYS]


def test_markdown_table_names_every_key() -> None:
    """The docs table has one row per key, in KEYS order."""
    rows = markdown_table().splitlines()[2:]
    assert [row.split("`")[1] for row in rows] == [key.name for key in KEYS]


def test_resolved_values_resolve_to_themselves(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Values written back to app.config parse to the same values again (parsers are idempotent)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DIAGLOG_LEVEL", "warning")
    app = make_app({"DIAGLOG_LOG_DIR": "rel/logs", "DIAGLOG_DASHBOARD_URL": "/dash/"})
    monkeypatch.delenv("DIAGLOG_LEVEL")
    first = {key.name: app.config[key.name] for key in KEYS}
    assert first["DIAGLOG_LEVEL"] == logging.WARNING
    assert first["DIAGLOG_LOG_DIR"] == str(tmp_path / "rel" / "logs")
    assert first["DIAGLOG_DASHBOARD_URL"] == "/dash"
    assert resolve(first, {}) == first


def test_settings_attributes_are_the_parsed_values(make_app: Callable[..., Flask]) -> None:
    """load_settings returns, per key, exactly the value it wrote back to app.config."""
    app = make_app(init=False)
    settings = load_settings(app, environ={})
    for key in KEYS:
        assert getattr(settings, key.attr) == app.config[key.name], key.name


def test_shown_masks_secret_keys() -> None:
    """A secret key with a value is shown as '***'; unset it is shown as None."""
    assert shown("DIAGLOG_DASHBOARD_TOKEN", "hunter2") == "'***'"
    assert shown("DIAGLOG_LIVE_TOKEN", "hunter2") == "'***'"
    assert shown("DIAGLOG_DASHBOARD_TOKEN", None) == "None"
    assert shown("DIAGLOG_FORMAT", "plain") == "'plain'"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:pw@host:6379/0", "'redis://:***@host:6379/0'"),
        ("rediss://user:pw@host", "'rediss://user:***@host'"),
        ("redis://:p@ss@host/0", "'redis://:***@host/0'"),
        ("unix:///run/redis.sock?db=0&password=pw", "'unix:///run/redis.sock?db=0&password=***'"),
        ("redis://user@host:6379/0", "'redis://user@host:6379/0'"),
    ],
)
def test_shown_masks_url_passwords(url: str, expected: str) -> None:
    """A URL's password (userinfo or password= query) is shown as ***; the rest stays visible."""
    assert shown("DIAGLOG_JOB_STORE", url) == expected


@pytest.mark.parametrize("key", ["DIAGLOG_DASHBOARD_TOKEN", "DIAGLOG_LIVE_TOKEN"])
def test_config_error_does_not_echo_a_secret(make_app: Callable[..., Flask], key: str) -> None:
    """A bad value of a secret key is reported with the key and source, never the value."""
    with pytest.raises(ConfigError) as info:
        make_app({key: 987654321})
    message = str(info.value)
    assert f"{key}='***' (from app.config" in message
    assert "987654321" not in message


def test_a_bad_port_error_masks_the_password(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job store URL whose port is not a number is a startup error, its password masked."""
    monkeypatch.setenv("DIAGLOG_JOB_STORE", "redis://:pw-leak@h:notaport/0")
    with pytest.raises(ConfigError, match=r"'redis://:\*\*\*@h:notaport/0'") as info:
        make_app()
    assert "pw-leak" not in str(info.value)


def test_config_error_masks_a_url_password(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad job store URL is reported with its password masked."""
    monkeypatch.setenv("DIAGLOG_JOB_STORE", "postgres://app:pw-leak@db/0")
    with pytest.raises(ConfigError, match=r"'postgres://app:\*\*\*@db/0'") as info:
        make_app()
    assert "pw-leak" not in str(info.value)


def test_config_command_masks_secrets(make_app: Callable[..., Flask]) -> None:
    """`flask diaglog config` lists every key, with tokens and URL passwords masked."""
    app = make_app(
        {
            "DIAGLOG_LIVE_TOKEN": "live-s3cret-0123456789",
            "DIAGLOG_DASHBOARD_TOKEN": "dash-s3cret-0123456789",
            "DIAGLOG_LIVE_QUEUE": "redis://:queue-s3cret@queue-host:6379/0",
        }
    )
    result = app.test_cli_runner().invoke(diaglog_cli, ["config"])
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output
    assert "DIAGLOG_LIVE_QUEUE = 'redis://:***@queue-host:6379/0'" in result.output
    assert "DIAGLOG_DASHBOARD_TOKEN = '***'" in result.output
    assert [line.split(" = ")[0] for line in result.output.splitlines()] == [
        key.name for key in KEYS
    ]


def test_log_dir_prefers_environment(tmp_path: Path) -> None:
    """log_dir() takes DIAGLOG_LOG_DIR from the environment over config, as an absolute path."""
    env = {"DIAGLOG_LOG_DIR": str(tmp_path / "from-env")}
    config = {"DIAGLOG_LOG_DIR": str(tmp_path / "from-config")}
    assert log_dir(config, env) == str(tmp_path / "from-env")
    assert log_dir(config, {}) == str(tmp_path / "from-config")
    assert log_dir(None, {}) == os.path.abspath("logs")


def test_cli_reads_the_environment_log_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI finds DIAGLOG_LOG_DIR from the environment even for an app without DiagLog."""
    env_dir = tmp_path / "env-logs"
    env_dir.mkdir()
    (env_dir / "requests.log").write_text(
        "2026-11-22 10:00:00.000 | INFO | flask_diaglog.request | req=R job=- | from env\n"
    )
    monkeypatch.setenv("DIAGLOG_LOG_DIR", str(env_dir))
    app = Flask(__name__)
    app.config["DIAGLOG_LOG_DIR"] = str(tmp_path / "config-logs")
    result = app.test_cli_runner().invoke(diaglog_cli, ["tail"])
    assert result.exit_code == 0, result.output
    assert result.output.endswith("from env\n")
