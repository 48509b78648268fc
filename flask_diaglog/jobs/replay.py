"""Replay records: a finished response encoded for the job store, and read back.

``@guard_job(replay=True)`` stores the response of a completed job so that a retry with the same
``Idempotency-Key`` and payload gets it again. This module owns the payload fingerprint, the
record's encoding and its decoding; :mod:`.guard` decides when to store and when to replay, and
the stores (:mod:`.stores`) keep the records, bounded.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from flask import Response
from flask.wrappers import Request

__all__ = ["REPLAY_MAX_BYTES", "Replayed", "encode_record", "fingerprint"]

#: Responses larger than this are not stored for replay.
REPLAY_MAX_BYTES = 1024 * 1024


def fingerprint(req: Request) -> str:
    """A digest of what makes two requests "the same payload": method, path, query and body."""
    h = hashlib.sha256()
    h.update(f"{req.method} {req.path}?{req.query_string.decode('latin-1')}\n".encode())
    if req.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        # The body may already be parsed (the job id lookup reads form fields): hash the fields.
        for name, field in sorted(req.form.items(multi=True)):
            h.update(f"f {name}={field}\n".encode())
        for name, upload in sorted(req.files.items(multi=True), key=lambda kv: kv[0]):
            pos = upload.stream.tell()
            digest = hashlib.sha256(upload.stream.read()).hexdigest()
            upload.stream.seek(pos)
            h.update(f"u {name}={upload.filename}:{digest}\n".encode())
    else:
        h.update(req.get_data(cache=True))
    return h.hexdigest()[:32]


def encode_record(response: Response, fp: str, max_bytes: int = REPLAY_MAX_BYTES) -> str | None:
    """The response as stored for replay, or ``None`` when it cannot or should not be stored
    (streamed, a 5xx, or a body over ``max_bytes``)."""
    if response.is_streamed or response.status_code >= 500:
        return None
    body = response.get_data()
    if len(body) > max_bytes:
        return None
    record: dict[str, Any] = {
        "status": response.status_code,
        "content_type": response.content_type,
        "body": base64.b64encode(body).decode("ascii"),
        "fingerprint": fp,
    }
    location = response.headers.get("Location")
    if location:
        record["location"] = location
    return json.dumps(record, separators=(",", ":"))


class Replayed:
    """A decoded replay record."""

    __slots__ = ("body", "content_type", "fingerprint", "location", "status")

    def __init__(self, raw: str) -> None:
        """Decode ``raw``; ``ValueError``, ``KeyError`` or ``TypeError`` when it is unreadable."""
        record = json.loads(raw)
        self.fingerprint: str = record["fingerprint"]
        self.body = base64.b64decode(record["body"])
        self.status = int(record["status"])
        self.content_type: str | None = record.get("content_type")
        self.location: str | None = record.get("location")

    def response(self) -> Response:
        """The stored response again, marked ``Idempotent-Replayed: true``."""
        response = Response(self.body, status=self.status, content_type=self.content_type)
        response.headers["Idempotent-Replayed"] = "true"
        if self.location:
            response.headers["Location"] = self.location
        return response
