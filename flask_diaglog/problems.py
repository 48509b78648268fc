"""``application/problem+json`` (RFC 9457) answers for the HTTP errors diaglog raises."""

from __future__ import annotations

import json
from typing import Any

from werkzeug.exceptions import BadRequest, HTTPException
from werkzeug.sansio.response import Response as SansIOResponse
from werkzeug.wrappers import Response

__all__ = ["InvalidJobId", "ProblemError", "problem_response"]

PROBLEM_MIMETYPE = "application/problem+json"


def problem_response(
    status: int, title: str, detail: str, *, type_: str = "about:blank", **extra: Any
) -> Response:
    """A problem+json response. ``extra`` keys are added to the body."""
    body = {"type": type_, "title": title, "status": status, "detail": detail, **extra}
    return Response(json.dumps(body, ensure_ascii=False), status=status, mimetype=PROBLEM_MIMETYPE)


class ProblemError(HTTPException):
    """An HTTPException whose default response is a problem+json body.

    Handlers registered with ``@app.errorhandler(code)`` still receive it and may answer
    differently; ``problem`` holds the body as a dict.
    """

    title = "Error"
    problem_type = "about:blank"

    def __init__(self, detail: str, *, response: Response | None = None, **extra: Any) -> None:
        super().__init__(detail, response=response)
        self.extra = extra

    @property
    def problem(self) -> dict[str, Any]:
        return {
            "type": self.problem_type,
            "title": self.title,
            "status": self.code,
            "detail": self.description,
            **self.extra,
        }

    def get_response(  # type: ignore[override]
        self, environ: Any = None, scope: dict[str, Any] | None = None
    ) -> SansIOResponse:
        if self.response is not None:
            return self.response
        assert self.code is not None
        return problem_response(
            self.code, self.title, str(self.description), type_=self.problem_type, **self.extra
        )


class InvalidJobId(ProblemError, BadRequest):
    """400: a job id was given but is not 1 to 128 characters of ``[A-Za-z0-9._:-]``."""

    title = "Invalid job id"
    problem_type = "urn:flask-diaglog:problem:invalid-job-id"
