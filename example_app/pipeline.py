"""The (simulated) 2D-to-3D generation pipeline: validate, preprocess, generate, postprocess.

Real work would run a model on a GPU; here ``generate`` sleeps for ``EXAMPLE_GENERATE_SECONDS``
and builds a small height-map mesh from the image bytes, so the stages take visible time.
"""

from __future__ import annotations

import logging
import struct
import time
from typing import Any

from flask import current_app

from flask_diaglog import current_job_id, stage, timed_stage

from .store import JobStore

log = logging.getLogger(__name__)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


class InvalidImage(ValueError):
    """The upload is not a PNG or JPEG image we can read."""


def image_info(data: bytes) -> dict[str, Any]:
    """Format and size of a PNG or JPEG, read from its header. Raises InvalidImage."""
    if data.startswith(PNG_MAGIC):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise InvalidImage("PNG header is truncated")
        width, height = struct.unpack(">II", data[16:24])
        return {"format": "png", "width": width, "height": height}
    if data.startswith(JPEG_MAGIC):
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                break
            marker = data[i + 1]
            length = struct.unpack(">H", data[i + 2 : i + 4])[0]
            if marker in (0xC0, 0xC1, 0xC2):
                height, width = struct.unpack(">HH", data[i + 5 : i + 9])
                return {"format": "jpeg", "width": width, "height": height}
            i += 2 + length
        raise InvalidImage("JPEG has no frame header")
    raise InvalidImage("not a PNG or JPEG image")


@timed_stage("preprocess")
def preprocess(data: bytes, size: int = 16) -> list[list[float]]:
    """A size x size height map from the image bytes (stands in for depth estimation)."""
    body = data[-size * size :] if len(data) >= size * size else data.ljust(size * size, b"\0")
    return [[body[r * size + c] / 255.0 for c in range(size)] for r in range(size)]


@timed_stage
def postprocess(obj: str) -> dict[str, int]:
    """Mesh statistics."""
    lines = obj.splitlines()
    return {
        "vertices": sum(1 for line in lines if line.startswith("v ")),
        "faces": sum(1 for line in lines if line.startswith("f ")),
    }


def build_mesh(heights: list[list[float]]) -> str:
    size = len(heights)
    out = [f"v {c} {heights[r][c]:.4f} {r}" for r in range(size) for c in range(size)]
    for r in range(size - 1):
        for c in range(size - 1):
            a = r * size + c + 1
            out.append(f"f {a} {a + 1} {a + size + 1} {a + size}")
    return "\n".join(out) + "\n"


def run_generation(store: JobStore, job_id: str, options: dict[str, Any]) -> None:
    """Background work started by ``diaglog.spawn``: every stage is timed and logged."""
    store.update(job_id, status="running", stage=None, error=None)
    try:
        with stage("validate"):
            store.update(job_id, stage="validate")
            data = store.image(job_id)
            info = image_info(data)
            if info["width"] * info["height"] > 40_000_000:
                raise InvalidImage("image is larger than 40 megapixels")
        store.update(job_id, stage="preprocess")
        heights = preprocess(data, size=int(options.get("resolution", 16)))
        with stage("generate"):
            store.update(job_id, stage="generate")
            log.info("generating mesh for job %s (%s)", current_job_id(), options)
            seconds = float(current_app.config.get("EXAMPLE_GENERATE_SECONDS", 2.0))
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:  # stands in for model inference
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            obj = build_mesh(heights)
        store.update(job_id, stage="postprocess")
        stats = postprocess(obj)
        store.finish(job_id, obj, stats)
        log.info("job %s done: %s", job_id, stats)
    except Exception as exc:
        store.update(job_id, status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
