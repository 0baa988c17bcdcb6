"""The shared photos as JPEG bytes, the image input of the benchmarks."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from PIL import Image

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"


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
