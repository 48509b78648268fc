"""No secret reaches a file or an event, wherever a client or the app puts it.

A property-based test places secrets at random in paths, query strings (also nested in another
parameter's value, plain or percent-encoded), headers, JSON bodies, log messages and exception
messages, with random text around them and key names in random case and with random separators,
and checks that no secret appears in any log file (plain and JSON) nor in the events that
:func:`flask_diaglog.testing.capture_events` captures. The rules are in docs/security.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from flask import Flask, request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import Headers

from flask_diaglog.testing import capture_events

FILES = ("requests", "jobs", "errors")
#: Key names that are secret under the default DIAGLOG_REDACT, written with "_" between words.
KEYS = [
    "password", "passwd", "secret", "token", "api_key", "apikey", "access_token", "client_secret",
    "refresh_token", "x_api_key", "auth_token", "db_password", "x_amz_signature", "credentials",
]  # fmt: skip
SCHEMES = [
    "Bearer", "Basic", "Negotiate", "NTLM", "ApiKey", "Digest response=", "Token",
    "AWS4-HMAC-SHA256 Credential=", "Custom x=1, y=",
]  # fmt: skip
#: Schemes whose credential is masked even with no header name in front of it.
BARE_SCHEMES = ["Bearer", "Basic", "Negotiate", "NTLM", "ApiKey", "AWS4-HMAC-SHA256"]
SECRET_ALPHABET = "abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"

secrets = st.text(SECRET_ALPHABET, min_size=12, max_size=20).map(lambda s: f"Zk9{s}")
filler = st.text(max_size=16)


@st.composite
def key_names(draw: st.DrawFn) -> str:
    """A secret key name in any case, its words joined by ``_``, ``-`` or ``.``."""
    words = draw(st.sampled_from(KEYS)).split("_")
    sep = draw(st.sampled_from(["_", "-", ".", ""])) if len(words) > 1 else ""
    case = draw(st.sampled_from([str.lower, str.upper, str.title, str.capitalize]))
    return case(sep.join(words))


@dataclass
class Placed:
    """Where the secrets of one request are."""

    secrets: list[str] = field(default_factory=list)
    path: str = "/"
    query: list[str] = field(default_factory=list)
    environ: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    error: str = ""


@st.composite
def free_text(draw: st.DrawFn, secret: str) -> str:
    """``secret`` in one of the forms free text carries credentials in, with random text
    around it."""
    key = draw(key_names())
    scheme = draw(st.sampled_from(SCHEMES))
    bare = draw(st.sampled_from(BARE_SCHEMES))
    header = draw(st.sampled_from(["Authorization", "Proxy-Authorization"]))
    form = draw(
        st.sampled_from(
            [
                f"{key}={secret}",
                f"{key}: {secret}",
                f"{key} = {secret},",
                f'"{key}": "{secret}"',
                f"'{key}': '{secret}'",
                f"{key}%3D{secret}%26page%3D2",
                json.dumps({"user": "ann", key: secret}),
                str({"user": "ann", key: secret}),
                str(Headers([("Host", "h"), (header, f"{scheme} {secret}"), ("Accept", "*/*")])),
                repr([("Host", "h"), (header, f"{scheme} {secret} more")]),
                str({header: f"{scheme} {secret}"}),
                f"Cookie: theme=dark; sid={secret}; csrf=x",
                f"Set-Cookie: sid={secret}; Path=/; HttpOnly",
                f"{bare} {secret}",
                f"https://example.org/cb?next=%2Fdone%3F{key}%3D{secret}&page=2",
                f"/reset/{key}={secret};page=2",
            ]
        )
    )
    return f"{draw(filler)} {form} {draw(filler)}"


@st.composite
def placements(draw: st.DrawFn) -> Placed:
    """One to five secrets, each in a random place of one request."""
    p = Placed()
    for _ in range(draw(st.integers(1, 5))):
        secret = draw(secrets)
        p.secrets.append(secret)
        key = draw(key_names())
        where = draw(
            st.sampled_from(
                ["path", "query", "query_nested", "query_encoded", "header", "auth", "cookie",
                 "referer", "body", "body_text", "message", "error"]
            )
        )  # fmt: skip
        if where == "path":
            tail = draw(st.sampled_from(["", ";page=2", "/next", "&x=1"]))
            sep = draw(st.sampled_from(["=", "%3D", "%253D"]))
            p.path += f"{quote(draw(filler), safe='')}/{key}{sep}{secret}{tail}/"
        elif where == "query":
            p.query += [f"q={quote(draw(filler))}", f"{key}={secret}"]
        elif where == "query_nested":
            p.query.append(f"next=/cb?{key}={secret}")
        elif where == "query_encoded":
            p.query.append(f"next={quote(quote(f'/cb?{key}={secret}', safe=''), safe='')}")
        elif where == "header":
            p.environ["HTTP_" + key.upper().replace("-", "_").replace(".", "_")] = secret
        elif where == "auth":
            scheme = draw(st.sampled_from(SCHEMES))
            name = draw(st.sampled_from(["HTTP_AUTHORIZATION", "HTTP_PROXY_AUTHORIZATION"]))
            p.environ[name] = f"{scheme} {secret}"
        elif where == "cookie":
            p.environ["HTTP_COOKIE"] = f"a=1; {draw(key_names())}=x; sid={secret}; z=2"
        elif where == "referer":
            p.environ["HTTP_REFERER"] = f"https://example.org/cb?{key}={secret}&page=2"
        elif where == "body":
            value: Any = {key: secret, "note": draw(filler)}
            for _ in range(draw(st.integers(0, 4))):
                value = draw(st.sampled_from([{"data": value}, [value, 1], {"list": [value]}]))
            p.body[f"b{len(p.body)}"] = value
        elif where == "body_text":
            p.body[f"b{len(p.body)}"] = draw(free_text(secret))
        elif where == "message":
            p.messages.append(draw(free_text(secret)))
        else:
            p.error += draw(free_text(secret))
    return p


def _app(make_app: Callable[..., Flask], fmt: str, log_dir: Path) -> tuple[Flask, list[Placed]]:
    app = make_app({"TESTING": False, "DIAGLOG_FORMAT": fmt, "DIAGLOG_LOG_DIR": str(log_dir)})
    current: list[Placed] = []

    @app.route("/", defaults={"rest": ""}, methods=["POST"])
    @app.route("/<path:rest>", methods=["POST"])
    def view(rest: str) -> str:
        p = current[0]
        request.get_json(silent=True)  # in memory: the error line shows the body
        for msg in p.messages:
            app.logger.warning("%s", msg)
        app.logger.info("headers: %s", request.headers)
        app.logger.info(
            "environ: %s", {k: v for k, v in request.environ.items() if k[:5] == "HTTP_"}
        )
        raise RuntimeError(p.error)

    return app, current


def test_no_secret_in_any_file_or_event(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    """Secrets placed at random in a request and in what the app logs and raises are masked in
    every file of both layouts and in every captured event."""
    apps = {fmt: _app(make_app, fmt, tmp_path / fmt) for fmt in ("plain", "json")}

    @settings(
        max_examples=300,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(p=placements())
    def one_request(p: Placed) -> None:
        for fmt, (app, current) in apps.items():
            files = [tmp_path / fmt / f"{n}.log" for n in FILES]
            before = [f.stat().st_size if f.exists() else 0 for f in files]
            current[:] = [p]
            with capture_events(app) as events:
                app.test_client().post(
                    p.path,
                    query_string="&".join(p.query),
                    json=p.body or None,
                    environ_overrides=p.environ,
                )
            assert events, "the request was recorded"
            seen = "\n".join(
                json.dumps(ev.to_dict(), ensure_ascii=False, default=str) for ev in events
            )
            # What this request added (an earlier example may have used the same secret).
            written = b"".join(
                f.read_bytes()[size:] for f, size in zip(files, before, strict=True) if f.exists()
            ).decode("utf-8")
            for secret in p.secrets:
                assert secret not in seen, (fmt, secret)
                assert secret not in written, (fmt, secret)

    one_request()
