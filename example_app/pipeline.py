"""The (simulated) 2D-to-3D generation pipeline: validate, preprocess, generate, postprocess.

Images are really decoded (Pillow), so a truncated or corrupt upload is refused. Real work would
then run a model on a GPU; here ``generate`` builds a small height-map mesh from the image row by
row, pausing so that the whole takes ``EXAMPLE_GENERATE_SECONDS``, and reports its progress with
:func:`flask_diaglog.progress` (a ``progress`` line, signal and live event) and in the job record.
"""

from __future__ import annotations

import io
import logging
import time
from typing import Any

from flask import current_app
from PIL import Image, UnidentifiedImageError

from flask_diaglog import current_job_id, progress, stage, timed_stage

from .store import JobStore

log = logging.getLogger(__name__)

#: The formats an upload may have (Pillow's names).
FORMATS = ("PNG", "JPEG")
#: The first bytes of each format: an unreadable file that starts so is damaged, not foreign.
MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}
#: Larger images are refused before they are decoded.
MAX_PIXELS = 40_000_000


class InvalidImage(ValueError):
    """The upload is not an image we can use; ``status`` is the HTTP status to answer with."""

    status = 422
    title = "Invalid image"


class UnsupportedImage(InvalidImage):
    """Not a PNG or JPEG."""

    status = 415
    title = "Unsupported image"


class DamagedImage(InvalidImage):
    """A PNG or JPEG that cannot be decoded (truncated, corrupt)."""

    title = "Damaged image"


class ImageTooLarge(InvalidImage):
    """More than :data:`MAX_PIXELS` pixels."""

    title = "Image too large"


def decode(data: bytes) -> Image.Image:
    """The fully decoded PNG or JPEG in ``data``. Raises an :class:`InvalidImage`."""
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        claimed = next((name for magic, name in MAGIC.items() if data.startswith(magic)), None)
        if claimed is not None:
            raise DamagedImage(f"the {claimed} header is truncated or corrupt") from None
        raise UnsupportedImage("not a PNG or JPEG image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge(f"the image has more than {MAX_PIXELS} pixels") from None
    except Exception as exc:  # Pillow raises many types for a broken header
        raise DamagedImage(f"the image header cannot be read ({exc})") from exc
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise ImageTooLarge(f"the image has {width}x{height} pixels, more than {MAX_PIXELS}")
    try:
        img.load()  # decodes every pixel: a truncated or corrupt body fails here
    except Exception as exc:
        raise DamagedImage(f"the image cannot be decoded ({exc})") from exc
    return img


def image_info(img: Image.Image) -> dict[str, Any]:
    """Format and size of a decoded image."""
    return {"format": str(img.format).lower(), "width": img.width, "height": img.height}


def report(store: JobStore, job_id: str, fraction: float, message: str) -> None:
    """Progress of the whole pipeline: a ``progress`` event, and the job record (any worker)."""
    progress(fraction, message=message)
    store.update(job_id, progress={"fraction": round(fraction, 4), "message": message})


@timed_stage("preprocess")
def preprocess(img: Image.Image, size: int = 16) -> list[list[float]]:
    """A size x size height map from the image's brightness (stands in for depth estimation)."""
    gray = img.convert("L").resize((size, size))
    pixels = gray.tobytes()
    return [[pixels[r * size + c] / 255.0 for c in range(size)] for r in range(size)]


@timed_stage
def postprocess(obj: str) -> dict[str, int]:
    """Mesh statistics."""
    lines = obj.splitlines()
    return {
        "vertices": sum(1 for line in lines if line.startswith("v ")),
        "faces": sum(1 for line in lines if line.startswith("f ")),
    }


def faces(size: int) -> list[str]:
    out = []
    for r in range(size - 1):
        for c in range(size - 1):
            a = r * size + c + 1
            out.append(f"f {a} {a + 1} {a + size + 1} {a + size}")
    return out


def run_generation(store: JobStore, job_id: str, options: dict[str, Any]) -> None:
    """Background work started by ``diaglog.spawn``: every stage is timed, logged and reported."""
    store.update(job_id, status="running", stage=None, error=None, progress=None)
    try:
        with stage("validate"):
            store.update(job_id, stage="validate")
            img = decode(store.image(job_id))
        report(store, job_id, 0.05, "image decoded")
        store.update(job_id, stage="preprocess")
        heights = preprocess(img, size=int(options.get("resolution", 16)))
        report(store, job_id, 0.1, "height map ready")
        with stage("generate"):
            store.update(job_id, stage="generate")
            log.info("generating mesh for job %s (%s)", current_job_id(), options)
            seconds = float(current_app.config.get("EXAMPLE_GENERATE_SECONDS", 2.0))
            size = len(heights)
            vertices: list[str] = []
            for r in range(size):  # one row at a time: stands in for model inference steps
                time.sleep(seconds / size)
                vertices += [f"v {c} {heights[r][c]:.4f} {r}" for c in range(size)]
                report(store, job_id, 0.1 + 0.85 * (r + 1) / size, f"mesh row {r + 1}/{size}")
            obj = "\n".join(vertices + faces(size)) + "\n"
        store.update(job_id, stage="postprocess")
        stats = postprocess(obj)
        report(store, job_id, 1.0, "mesh ready")
        store.finish(job_id, obj, stats)
        log.info("job %s done: %s", job_id, stats)
    except Exception as exc:
        store.update(job_id, status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
