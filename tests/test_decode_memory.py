"""The decode budget's estimates hold: for every format and mode, the memory that decoding and
preprocessing a large image really takes (the peak RSS of a fresh process) is at most what
:func:`clipserve.preprocess.image.decode_cost` reserved for it from the header, and not far above."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time

import pytest
from PIL import Image

from clipserve.errors import Overloaded
from clipserve.preprocess.budget import DecodeBudget
from clipserve.preprocess.image import ImageLimits, decode_image
from tests.conftest import REPO

SIDE = 5000
"""25 megapixels: the per-pixel costs show well above the fixed ones, and the images save quickly."""
BASE = Image.new("RGB", (SIDE, SIDE), (120, 30, 200))
CASES = {
    "webp-lossless": (lambda: BASE.convert("RGBA"), {"format": "WEBP", "lossless": True}),
    "avif": (lambda: BASE, {"format": "AVIF", "quality": 50}),
    "jpeg-cmyk": (lambda: BASE.convert("CMYK"), {"format": "JPEG"}),
    "jpeg-progressive": (lambda: BASE, {"format": "JPEG", "progressive": True}),
    "jpeg-progressive-444": (lambda: BASE, {"format": "JPEG", "progressive": True, "subsampling": 0}),
    "jpeg-grey": (lambda: BASE.convert("L"), {"format": "JPEG"}),
    "png-rgba": (lambda: BASE.convert("RGBA"), {"format": "PNG"}),
    "png-la": (lambda: BASE.convert("LA"), {"format": "PNG"}),
    "png-16-bit": (lambda: Image.new("I;16", (SIDE, SIDE), 300), {"format": "PNG"}),
    "tiff-float": (
        lambda: Image.new("F", (SIDE, SIDE), 0.5),
        {"format": "TIFF", "compression": "tiff_deflate"},
    ),
    "gif": (lambda: BASE.convert("P", palette=Image.Palette.ADAPTIVE), {"format": "GIF"}),
}
MEASURE = """
import json, sys
from PIL import Image
from clipserve.preprocess.image import ImageLimits, ImagePreprocessor, decode_cost, decoded_image
from clipserve.zoo import get_spec

def rss(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))

path = sys.argv[1]
preprocess = ImagePreprocessor(get_spec("ViT-B-32::openai"))
estimate = decode_cost(Image.open(path))
before = rss("VmRSS")
with decoded_image(path, 0, ImageLimits()) as image:
    preprocess.rgb(image)
print(json.dumps({"estimate": estimate, "used": rss("VmHWM") - before}))
"""


@pytest.mark.parametrize("case", list(CASES))
def test_the_estimate_covers_what_a_decode_holds(case, tmp_path) -> None:
    make, options = CASES[case]
    path = tmp_path / f"{case}.{options['format'].lower()}"
    buffer = io.BytesIO()
    make().save(buffer, **options)
    path.write_bytes(buffer.getvalue())
    run = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert run.returncode == 0, run.stderr
    measured = json.loads(run.stdout)
    used, estimate = measured["used"], measured["estimate"]
    assert used <= estimate, f"{case}: used {used / 2**20:.0f} MiB, estimated {estimate / 2**20:.0f} MiB"
    assert estimate <= 2 * used + 16 * 2**20, (
        f"{case}: estimate {estimate / 2**20:.0f} MiB for {used / 2**20:.0f}"
    )


def test_waiting_for_the_budget_is_not_decoding_time(photo_paths) -> None:
    """Round 3: under load, a sixth concurrent ``/encode`` got a 422 "took longer than 10 s": the
    wait for room in the budget counted against the decode deadline."""
    budget = DecodeBudget(64 * 2**20)
    limits = ImageLimits(max_decode_s=0.5, budget=budget)
    released = threading.Event()

    def hold() -> None:
        with budget.reserve(budget.capacity):
            released.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    threading.Timer(1.5, released.set).start()  # three deadlines' worth of waiting
    started = time.monotonic()
    image = decode_image(photo_paths[0], 3, limits)
    holder.join()
    assert time.monotonic() - started >= 1.4 and image.size == Image.open(photo_paths[0]).size


def test_a_budget_full_for_too_long_is_a_retryable_overload(photo_paths) -> None:
    budget = DecodeBudget(2**20)
    with (
        budget.reserve(budget.capacity),
        pytest.raises(Overloaded, match=r"item 4: the decode budget") as caught,
        budget.reserve(10, 4, max_wait_s=0.2),
    ):
        pass
    assert caught.value.http_status == 503 and budget.used == 0
