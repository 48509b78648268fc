"""Secrets never reach a line: headers, query strings, paths, JSON fields and free text, in time
linear in the input."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from flask import Flask, request
from werkzeug.datastructures import Headers

from flask_diaglog.logread import read_records
from flask_diaglog.readfile import MAX_LINE
from flask_diaglog.redact import MASK, SCAN_LIMIT, Redactor
from tests.conftest import Logs

SECRETS = ["s3cr3t-pw", "tok-123456", "key-abcdef", "Bearer-xyz", "sess-cookie", "sid-777"]
#: DIAGLOG_REDACT's default fragments (config.py).
DEFAULT = ("password", "passwd", "secret", "token", "api_key", "apikey")


def _all_files(logs: object) -> str:
    return "".join(logs.text(n) for n in ("requests", "jobs", "errors"))  # type: ignore[attr-defined]


@pytest.fixture
def r() -> Redactor:
    return Redactor(DEFAULT)


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
        request.get_json()
        raise ValueError("nope")

    app.test_client().post(
        "/x",
        json={"prompt": "a cat", "api_key": "key-abcdef"},
        headers={"Authorization": "Basic dXNlcjpwYXNz", "Set-Cookie": "a=b"},
    )
    (err,) = logs.events("errors", "request_error")  # type: ignore[attr-defined]
    assert err["headers"]["Authorization"] == MASK
    assert err["body"] == {"prompt": "a cat", "api_key": MASK}


def test_an_error_line_leaves_a_large_body_out_and_stays_readable(
    make_app: Callable[..., Flask], logs: object
) -> None:
    """A failing view that read a 3 MB JSON body: the error line has the headers and no body,
    stays under the readers' line limit, and reads back (a reader skips a longer line)."""
    app = make_app({"TESTING": False, "DIAGLOG_FORMAT": "json"})

    @app.post("/x")
    def x() -> str:
        request.get_json()
        raise ValueError("nope")

    big = {f"k{i}": "v" * 60_000 for i in range(50)}
    app.test_client().post("/x", json=big, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    text = logs.text("errors")  # type: ignore[attr-defined]
    assert len(text.encode()) < MAX_LINE
    (err,) = logs.events("errors", "request_error")  # type: ignore[attr-defined]
    assert err["headers"]["Authorization"] == MASK
    assert "body" not in err
    read = [r.event for r in read_records(str(logs.dir), ["errors"])]  # type: ignore[attr-defined]
    assert read == ["request_error"]


def test_custom_redact_list(make_app: Callable[..., Flask], logs: object) -> None:
    """DIAGLOG_REDACT replaces the key fragments that are masked."""
    app = make_app({"DIAGLOG_REDACT": "ssn,pin"})
    app.add_url_rule("/", view_func=lambda: "ok")
    app.test_client().get("/?ssn=123-45-6789&pin=4321&q=hello")
    text = logs.text("requests")  # type: ignore[attr-defined]
    assert "123-45-6789" not in text and "4321" not in text and "q=hello" in text


def test_custom_redact_list_keeps_the_builtin_rules() -> None:
    """DIAGLOG_REDACT extends the built-in rules: credentials and API keys stay masked."""
    r = Redactor(["ssn"])
    assert r.query("ssn=1&X-Api-Key=2&q=3") == f"ssn={MASK}&X-Api-Key={MASK}&q=3"
    assert r.text("Authorization: Negotiate abc") == f"Authorization: {MASK}"
    assert r.headers([("Cookie", "a=1"), ("Accept", "json")]) == {"Cookie": MASK, "Accept": "json"}


def test_redactor_unit_cases(r: Redactor) -> None:
    """The redactor masks by key at any depth and in free text, keeping structure."""
    assert r.data({"a": [{"password": "x"}], "b": 1}) == {"a": [{"password": MASK}], "b": 1}
    assert r.query("a=1&access_token=zzz") == f"a=1&access_token={MASK}"
    assert r.text('{"password": "hunter2"}') == f'{{"password": "{MASK}"}}'
    assert r.text("password='hunter2' ok") == f"password='{MASK}' ok"
    assert r.headers([("Cookie", "a"), ("Accept", "json")]) == {"Cookie": MASK, "Accept": "json"}


# -- Authorization and cookies in free text -----------------------------------------------------

CREDENTIALS = [
    "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig",
    "Basic dXNlcjpwYXNz",
    "Negotiate YIIBhwYGKwYBBQUCoIIBezCCAXeg",
    "NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAA",
    "ApiKey k-9f8e7d6c5b4a",
    'Digest username="ann", realm="x", nonce="abc", response="6629fae49393a05397450978507c4ef1"',
    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, "
    "SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6",
    "CustomScheme some opaque words and = signs; more",
]


@pytest.mark.parametrize("header", ["Authorization", "Proxy-Authorization"])
@pytest.mark.parametrize("credential", CREDENTIALS)
def test_authorization_of_any_scheme_is_masked_whole_in_a_header_dump(
    r: Redactor, header: str, credential: str
) -> None:
    """A logged ``str(request.headers)`` keeps no part of an Authorization value, any scheme."""
    dump = str(Headers([("Host", "example.org"), (header, credential), ("Accept", "*/*")]))
    out = r.text(dump)
    assert out == f"Host: example.org\r\n{header}: {MASK}\r\nAccept: */*\r\n\r\n"


@pytest.mark.parametrize("credential", CREDENTIALS)
def test_authorization_is_masked_whole_in_dict_and_tuple_reprs(
    r: Redactor, credential: str
) -> None:
    """``dict(request.headers)``, ``request.headers`` and JSON dumps of them keep no credential."""
    pairs = [("Authorization", credential), ("Accept", "json")]
    for text in (str(dict(pairs)), repr(pairs), json.dumps(dict(pairs))):
        out = r.text(text)
        assert credential not in out and credential.split()[-1] not in out, out
        assert "Accept" in out and "json" in out


def test_every_cookie_is_masked(r: Redactor) -> None:
    """Cookie and Set-Cookie values are masked whole: the cookies after the first too."""
    dump = str(
        Headers(
            [
                ("Cookie", "theme=dark; session=sess-1; csrf=c-2"),
                ("Set-Cookie", "sid=sid-3; Path=/; HttpOnly"),
            ]
        )
    )
    out = r.text(dump)
    for value in ("dark", "sess-1", "c-2", "sid-3"):
        assert value not in out
    assert out == f"Cookie: {MASK}\r\nSet-Cookie: {MASK}\r\n\r\n"


def test_bare_credentials_are_masked(r: Redactor) -> None:
    """A credential without a key in front of it (``Bearer ...``, ``Negotiate ...``) is masked."""
    out = r.text("retrying with Bearer abc.def.ghi and Negotiate YIIBhwYGKwYB then")
    assert out == f"retrying with Bearer {MASK} and Negotiate {MASK} then"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("token=abc next", f"token={MASK} next"),
        ("token = abc, next", f"token = {MASK}, next"),
        ('{"token": "a\\"b", "n": 1}', f'{{"token": "{MASK}", "n": 1}}'),
        ("{'token': 'abc', 'n': 1}", f"{{'token': '{MASK}', 'n': 1}}"),
        ('"{\\"token\\": \\"abc\\"}"', f'"{{\\"token\\": \\"{MASK}\\"}}"'),
        ("token%3Dabc%26n%3D1 next", f"token%3D{MASK} next"),
        ("token: Bearer abc.def next", f"token: {MASK} next"),
        ("token: ['a', 'b'] next", f"token: [{MASK}] next"),
        ("token={'a': {'b': 1}} next", f"token={{{MASK}}} next"),
        (
            "[('Accept', 'json'), ('X-Token', 'abc')]",
            f"[('Accept', 'json'), ('X-Token', '{MASK}')]",
        ),
    ],
)
def test_free_text_pair_forms(r: Redactor, text: str, expected: str) -> None:
    """Each documented way of writing a pair in free text masks the whole value, only it."""
    assert r.text(text) == expected


# -- key names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["X-Api-Key", "Api-Key", "api_key", "APIKEY", "ACCESS_TOKEN", "Access-Token", "client_secret",
     "refresh_token", "X-Auth-Token", "db.password", "X-Amz-Credential", "X-Hub-Signature-256"],
)  # fmt: skip
def test_secret_key_names_of_any_case_and_separator(r: Redactor, key: str) -> None:
    """A key is secret whatever its case and whether words are joined by ``-``, ``_`` or ``.``."""
    assert r.key_is_secret(key)
    assert r.headers([(key, "v-1")]) == {key: MASK}
    assert r.query(f"{key}=v-1&q=2") == f"{key}={MASK}&q=2"
    assert r.data({key: "v-1"}) == {key: MASK}
    assert r.text(f"{key}: v-1 done") == f"{key}: {MASK} done"
    assert r.text(f"{key}=v-1&q=2") == f"{key}={MASK}&q=2"


@pytest.mark.parametrize("key", ["Accept", "user", "next", "page", "Content-Type", "job_id"])
def test_ordinary_keys_are_not_secret(r: Redactor, key: str) -> None:
    """Keys that name no secret keep their values."""
    assert not r.key_is_secret(key)
    assert r.query(f"{key}=v-1") == f"{key}=v-1"


# -- paths and nested query values --------------------------------------------------------------


def test_path_pairs_are_masked(r: Redactor) -> None:
    """``key=value`` pairs inside path segments lose their secret values, nothing else."""
    assert r.path("/reset/token=X1;password=Y2/confirm") == (
        f"/reset/token={MASK};password={MASK}/confirm"
    )
    assert r.path("/a/api-key=K;page=2") == f"/a/api-key={MASK};page=2"
    assert r.path("/cb%3Ftoken%3DX1/next") == f"/cb%3Ftoken%3D{MASK}/next"


@pytest.mark.parametrize(
    "path", ["/", "/users/42/edit", "/search/q=cats;page=2", "/files/a%20b.txt", "/v1/job:run"]
)
def test_paths_without_secrets_are_unchanged(r: Redactor, path: str) -> None:
    """A path without a secret pair comes back as it was."""
    assert r.path(path) == path


def test_path_redaction_through_an_app(make_app: Callable[..., Flask], logs: object) -> None:
    """The request target on every line of a request has its path pairs masked."""
    app = make_app({"DIAGLOG_FORMAT": "json"})

    @app.get("/reset/<path:rest>")
    def reset(rest: str) -> str:
        return "ok"

    app.test_client().get("/reset/token=X1-secret;password=Y2-secret/next")
    text = logs.text("requests")  # type: ignore[attr-defined]
    assert "X1-secret" not in text and "Y2-secret" not in text
    assert f"/reset/token={MASK};password={MASK}/next" in text


@pytest.mark.parametrize(
    "qs",
    [
        "next=/cb?token=X1-secret&page=2",
        "next=%2Fcb%3Ftoken%3DX1-secret&page=2",
        "next=%252Fcb%253Ftoken%253DX1-secret&page=2",
        "next=https://idp.example/cb?code=1%26client_secret%3DX1-secret&page=2",
        "page=2&token%3DX1-secret=1",
    ],
)
def test_secrets_nested_in_query_values_are_masked(r: Redactor, qs: str) -> None:
    """A secret inside another parameter's value (a return URL) is masked; ``page`` stays."""
    out = r.query(qs)
    assert "X1-secret" not in out
    assert "page=2" in out and MASK in out


def test_non_secret_diagnostics_survive(r: Redactor) -> None:
    """Masking leaves ordinary text, URLs, times and lists of field names alone."""
    for text in (
        "GET /users/42 took 12.5ms at 10:15:02",
        "missing fields ['password', 'email']",
        "see https://example.org/docs?page=2#redaction",
        "ok, done: 3 items",
    ):
        assert r.text(text) == text


# -- linear time and the scan cap ---------------------------------------------------------------


def test_text_beyond_the_scan_limit_is_cut_with_a_marker(r: Redactor) -> None:
    """Only ``SCAN_LIMIT`` characters of a text are scanned; the rest is cut and counted."""
    out = r.text("a" * (SCAN_LIMIT + 1000))
    assert out == "a" * SCAN_LIMIT + "[diaglog: 1000 characters cut]"
    assert Redactor(DEFAULT, limit=10).text("token=abcdefghijkl") == (
        f"token={MASK}[diaglog: 8 characters cut]"
    )


def test_a_secret_across_the_scan_limit_is_not_shown(r: Redactor) -> None:
    """A secret value that straddles the cut shows no part of itself."""
    text = "x" * (SCAN_LIMIT - 10) + " token=" + "S" * 50
    out = r.text(text)
    assert "S" not in out and MASK in out


@pytest.mark.parametrize("quote", ['\\"', "\\'"])
def test_values_in_escaped_quotes_are_masked_one_by_one(r: Redactor, quote: str) -> None:
    """``token=\\"a\\"`` repeated on one line: each value masked, the text between kept. (Each
    value was found by scanning to the end of the line first: quadratic in the line's length,
    seconds for 64 kB; ``benchmarks/redact.py`` measures the shape.)"""
    text = " ".join(f"token={quote}v{i}{quote} k{i}" for i in range(2000))
    out = r.text(text)
    assert out == " ".join(f"token={quote}{MASK}{quote} k{i}" for i in range(2000))
    unclosed = r.text(f"a token={quote}s3cret rest\nnext line")
    assert unclosed == f"a token={quote}{MASK}\nnext line"


def test_huge_hostile_input_on_a_failing_request_is_written(
    make_app: Callable[..., Flask], logs: object
) -> None:
    """A 1 MB one-word log message, a 1 MB exception message and 64 kB of headers on a failing
    request are written, cut and masked (their cost is measured by ``benchmarks/redact.py``)."""
    app = make_app({"TESTING": False, "DIAGLOG_FORMAT": "json"})
    word = "a" * 1_000_000

    @app.get("/boom")
    def boom() -> str:
        app.logger.info(word)
        app.logger.info("token=%s", word)
        raise RuntimeError(word)

    headers = {f"X-Big-{i}": "b" * 8000 for i in range(6)}
    headers["Cookie"] = "c=" + "c" * 8000
    headers["Authorization"] = "Negotiate " + "n" * 8000
    client = app.test_client()
    r = client.get("/boom", headers=headers)
    assert r.status_code == 500
    (err,) = logs.events("errors", "request_error")  # type: ignore[attr-defined]
    assert err["headers"]["X-Big-0"] == "b" * 8000
    assert err["headers"]["Authorization"] == MASK
    assert "characters cut]" in err["error"]


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("redis://:pw123@cache:6379/0", "redis://:***@cache:6379/0"),
        (
            "connect postgresql://app:s3cr%40t@db/prod failed",
            "connect postgresql://app:***@db/prod failed",
        ),
        ("see https://example.org/a:b@c", "see https://example.org/a:b@c"),  # no userinfo
        ("amqp://guest@broker//", "amqp://guest@broker//"),  # a user, no password
    ],
)
def test_url_passwords_in_free_text_show_as_stars(text: str, shown: str) -> None:
    assert Redactor([]).text(text) == shown


def test_a_logged_dsn_never_reaches_the_file(make_app: Callable[..., Flask], logs: Logs) -> None:
    app = make_app()

    @app.get("/")
    def index() -> str:
        app.logger.warning("cannot reach redis://:hunter2@cache:6379/0")
        return "ok"

    app.test_client().get("/")
    assert "hunter2" not in logs.text("requests")
    assert "redis://:***@cache:6379/0" in logs.text("requests")
