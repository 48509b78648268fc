"""Secrets never reach a line: headers, query strings, JSON fields and free text."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, request

from flask_diaglog.redact import MASK, Redactor

SECRETS = ["s3cr3t-pw", "tok-123456", "key-abcdef", "Bearer-xyz", "sess-cookie", "sid-777"]


def _all_files(logs: object) -> str:
    return "".join(logs.text(n) for n in ("requests", "jobs", "errors"))  # type: ignore[attr-defined]


def test_secrets_never_appear_in_any_file(make_app: Callable[..., Flask], logs: object) -> None:
    """Authorization, Cookie, and password/secret/token/api_key values are masked everywhere."""
    for fmt in ("plain", "json"):
        app = make_app({"TESTING": False, "DIAGLOG_FORMAT": fmt})

        @app.post("/login")
        def login(app: Flask = app) -> str:
            body = request.get_json()
            app.logger.info("login payload %s", body)
            app.logger.info("calling api with api_key=key-abcdef and token: tok-123456")
            app.logger.info("headers: Authorization: Bearer Bearer-xyz")
            raise RuntimeError(f"auth failed for password={body['password']}")

        r = app.test_client().post(
            "/login?token=tok-123456&user=ann&api_key=key-abcdef",
            json={"user": "ann", "password": "s3cr3t-pw", "nested": {"client_secret": "sid-777"}},
            headers={
                "Authorization": "Bearer Bearer-xyz",
                "Cookie": "session=sess-cookie",
                "X-Api-Token": "tok-123456",
            },
        )
        assert r.status_code == 500
        text = _all_files(logs)
        for secret in SECRETS:
            assert secret not in text, (fmt, secret)
        assert MASK in text
        assert "user=ann" in text  # ordinary values survive
        for name in ("requests", "jobs", "errors"):
            logs.path(name).unlink(missing_ok=True)  # type: ignore[attr-defined]


def test_error_line_has_redacted_headers_and_body(
    make_app: Callable[..., Flask], logs: object
) -> None:
    """The request_error record keeps header names and body keys, masking secret values."""
    app = make_app({"TESTING": False, "DIAGLOG_FORMAT": "json"})

    @app.post("/x")
    def x() -> str:
        raise ValueError("nope")

    app.test_client().post(
        "/x",
        json={"prompt": "a cat", "api_key": "key-abcdef"},
        headers={"Authorization": "Basic dXNlcjpwYXNz", "Set-Cookie": "a=b"},
    )
    (err,) = logs.events("errors", "request_error")  # type: ignore[attr-defined]
    assert err["headers"]["Authorization"] == MASK
    assert err["body"] == {"prompt": "a cat", "api_key": MASK}


def test_custom_redact_list(make_app: Callable[..., Flask], logs: object) -> None:
    """DIAGLOG_REDACT replaces the key fragments that are masked."""
    app = make_app({"DIAGLOG_REDACT": "ssn,pin"})
    app.add_url_rule("/", view_func=lambda: "ok")
    app.test_client().get("/?ssn=123-45-6789&pin=4321&q=hello")
    text = logs.text("requests")  # type: ignore[attr-defined]
    assert "123-45-6789" not in text and "4321" not in text and "q=hello" in text


def test_redactor_unit_cases() -> None:
    """The redactor masks by key at any depth and in free text, keeping structure."""
    r = Redactor(["password", "token"])
    assert r.data({"a": [{"password": "x"}], "b": 1}) == {"a": [{"password": MASK}], "b": 1}
    assert r.query("a=1&access_token=zzz") == f"a=1&access_token={MASK}"
    assert r.text('{"password": "hunter2"}') == f'{{"password": "{MASK}"}}'
    assert r.text("password='hunter2' ok") == f"password='{MASK}' ok"
    assert r.headers([("Cookie", "a"), ("Accept", "json")]) == {"Cookie": MASK, "Accept": "json"}
