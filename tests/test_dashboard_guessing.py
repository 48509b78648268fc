"""The dashboard token against guessing: a token (``DIAGLOG_DASHBOARD_TOKEN``,
``DIAGLOG_LIVE_TOKEN``) has at least 16 characters, or the app does not start.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask

from flask_diaglog.values import ConfigError, parse_secret

# -- short tokens --------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["DIAGLOG_DASHBOARD_TOKEN", "DIAGLOG_LIVE_TOKEN"])
def test_a_token_shorter_than_16_characters_stops_startup(
    make_app: Callable[..., Flask], key: str
) -> None:
    """A 15-character token (blanks around it not counted) is a startup error that names the
    key and never shows the value; 16 characters start."""
    with pytest.raises(ConfigError) as info:
        make_app({key: "  s3cret-s3cret-  "})
    message = str(info.value)
    assert message.startswith(f"{key}='***' (from app.config")
    assert "s3cret" not in message
    make_app({key: "s3cret-s3cret-16"})


@pytest.mark.parametrize("key", ["DIAGLOG_DASHBOARD_TOKEN", "DIAGLOG_LIVE_TOKEN"])
def test_the_short_token_error_says_the_minimum(key: str) -> None:
    """The parser's error names the key, the minimum and how to make a token, not the value."""
    with pytest.raises(ConfigError) as info:
        parse_secret("x", key, "environment variable " + key)
    message = str(info.value)
    assert message.startswith(f"{key}='***' (from environment variable {key}) is too short")
    assert "at least 16 characters" in message and "secrets.token_urlsafe" in message
    assert parse_secret("0123456789abcdef", key, "default") == "0123456789abcdef"
    assert parse_secret(None, key, "default") is None
