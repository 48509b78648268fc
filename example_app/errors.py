"""Every error the example app answers is problem+json (RFC 9457), and so is a bad JSON body.

:func:`register` installs one handler for every ``HTTPException`` (404, 405, 413 from
``MAX_CONTENT_LENGTH``, the 500 of an unhandled error ...). diaglog's own problems (the job
guard's 400/409/422/503) already are problem+json and pass through unchanged.
:func:`json_object` reads an optional JSON object body, answering 400/415 problem+json for
broken JSON, a body that is not an object, or a body that is not JSON at all.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request
from werkzeug.exceptions import BadRequest, HTTPException, UnsupportedMediaType
from werkzeug.wrappers import Response

from flask_diaglog import ProblemError
from flask_diaglog.problems import problem_response

__all__ = ["InvalidBody", "json_object", "register"]


class InvalidBody(ProblemError, BadRequest):
    """400: the request body is not the JSON object the endpoint expects."""

    title = "Invalid JSON body"


class NotJson(ProblemError, UnsupportedMediaType):
    """415: a body was sent, but not as ``application/json``."""

    title = "Unsupported media type"


def json_object() -> dict[str, Any]:
    """The request's JSON object body; ``{}`` when there is no body. Raises a problem otherwise."""
    if not request.get_data(cache=True).strip():
        return {}
    if not request.is_json:
        raise NotJson(
            f"Send the options as application/json (got {request.mimetype or 'no type'!r})."
        )
    try:
        body = request.get_json()
    except BadRequest:
        raise InvalidBody("The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidBody(f"The body must be a JSON object, not {type(body).__name__}.")
    return body


def _as_problem(exc: HTTPException) -> Response:
    if isinstance(exc, ProblemError):
        response = exc.get_response()
        assert isinstance(response, Response)
        return response
    assert exc.code is not None
    response = problem_response(exc.code, exc.name, str(exc.description))
    # Keep what the exception adds: Allow on 405, Retry-After on 429/503 ...
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers.add(name, value)
    return response


def register(app: Flask) -> None:
    """Answer every HTTP error of ``app`` with problem+json."""
    app.register_error_handler(HTTPException, _as_problem)
