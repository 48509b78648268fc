"""Every HTTP error diaglog answers with, as ``application/problem+json`` (RFC 9457).

The job guard's 400/409/422/503, the invalid job id, and the helper for the dashboard's own
answers all live here.
"""

from __future__ import annotations

import json
from typing import Any

from werkzeug.exceptions import (
    BadRequest,
    Conflict,
    HTTPException,
    ServiceUnavailable,
    UnprocessableEntity,
)
from werkzeug.sansio.response import Response as SansIOResponse
from werkzeug.wrappers import Response

__all__ = [
    "DuplicateJob",
    "IdempotencyKeyMismatch",
    "InvalidJobId",
    "JobIdRequired",
    "JobIdUnreadable",
    "JobStoreUnavailable",
    "ProblemError",
    "problem_response",
]

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


_PROBLEM = "urn:flask-diaglog:problem:"


class DuplicateJob(ProblemError, Conflict):
    """409: the job id is already active. Customise with ``@app.errorhandler(409)``.

    :param job_id: the refused job id (also in the body and on :attr:`job_id`).
    :param response: a pre-built response to send instead of the problem+json body.
    """

    title = "Job already in progress"
    problem_type = _PROBLEM + "job-in-progress"

    def __init__(
        self, job_id: str, detail: str | None = None, *, response: Response | None = None
    ) -> None:
        if detail is None:
            detail = (
                f"The job {job_id!r} is already in progress. Wait until it has finished, "
                "then retry."
            )
        super().__init__(detail, response=response, job_id=job_id)
        #: The job id that is already in progress.
        self.job_id = job_id


class IdempotencyKeyMismatch(ProblemError, UnprocessableEntity):
    """422: the key was already used for a request with a different payload."""

    title = "Idempotency key reused with a different payload"
    problem_type = _PROBLEM + "idempotency-key-reused"

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"The key {job_id!r} was already used for a request with a different payload "
            "(method, path, query or body). Use a new key for a new request.",
            job_id=job_id,
        )
        self.job_id = job_id


class JobIdRequired(ProblemError, BadRequest):
    """400: the view requires a job id (idempotency key) and the request has none."""

    title = "Job id required"
    problem_type = _PROBLEM + "job-id-required"

    def __init__(self, where: str) -> None:
        super().__init__(
            f"This endpoint requires a job id (idempotency key). It is looked up in {where}.",
            looked_up_in=where,
        )


class JobIdUnreadable(ProblemError):
    """411, 413 or 400: a guarded request found no job id elsewhere and has a JSON or form body
    that may hold one, but the body cannot be looked at: it has no ``Content-Length`` (411), is
    larger than 1 MiB (413), or does not parse (400). Guarding it without its id would let a
    duplicate run unseen, so it is refused, with where else to send the id.
    """

    title = "Job id not readable from the body"
    problem_type = _PROBLEM + "job-id-unreadable"

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        super().__init__(
            f"This endpoint is guarded by a job id, which this request's body may hold, but the "
            f"body {reason}. Send the job id in the URL, the X-Job-ID header or the query "
            "parameter job_id, or send a body of at most 1 MiB with a Content-Length.",
            reason=reason,
        )


class JobStoreUnavailable(ProblemError, ServiceUnavailable):
    """503: the job store cannot be reached, so the job cannot be started safely."""

    title = "Job store unavailable"
    problem_type = _PROBLEM + "job-store-unavailable"

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"The job {job_id!r} cannot be started safely right now because the job store is "
            "unreachable. Retry in a moment.",
            job_id=job_id,
        )
        self.job_id = job_id
        #: Seconds in the ``Retry-After`` header.
        self.retry_after = 1

    def get_response(  # type: ignore[override]
        self, environ: Any = None, scope: dict[str, Any] | None = None
    ) -> SansIOResponse:
        response = super().get_response(environ, scope)
        if self.response is None and self.retry_after is not None:
            response.headers["Retry-After"] = str(self.retry_after)
        return response
