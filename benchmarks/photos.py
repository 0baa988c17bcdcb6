"""The shared photos as JPEG bytes, the image input of the benchmarks."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from PIL import Image

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"
LARGE_SIZE = (4000, 3000)
"""12 MP, a phone photo's size."""


def jpeg_photos(count: int | None = None) -> list[bytes]:
    """Each shared photo re-encoded as an RGB JPEG (quality 90), repeated in order up to ``count``."""
    with open(PHOTOS / "labels.csv") as f:
        files = [PHOTOS / row["file"] for row in csv.DictReader(f)]
    jpegs = []
    for path in files:
        buffer = io.BytesIO()
        Image.open(path).convert("RGB").save(buffer, format="JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    return [jpegs[i % len(jpegs)] for i in range(count or len(jpegs))]


def large_jpeg_photos(count: int, size: tuple[int, int] = LARGE_SIZE) -> list[bytes]:
    """``count`` photos of ``size`` (12 MP): the shared photos upscaled (bicubic), saved as JPEG q90
    (no larger real photos ship with the project)."""
    photos = []
    for data in jpeg_photos():
        buffer = io.BytesIO()
        Image.open(io.BytesIO(data)).resize(size, Image.Resampling.BICUBIC).save(
            buffer, format="JPEG", quality=90
        )
        photos.append(buffer.getvalue())
    return [photos[i % len(photos)] for i in range(count)]
