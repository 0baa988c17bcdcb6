"""The opt-in fast decode path: large JPEGs decoded at a reduced scale, then resized exactly.

The large photos are the shared ones upscaled (bicubic) to 12 MP and saved as JPEG: no larger real
photos ship with the project.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from clipserve.errors import InvalidInput
from clipserve.preprocess.image import ImageLimits, ImagePreprocessor, decode_image
from clipserve.zoo import get_spec
from tests.conftest import cosines

NAME = "ViT-B-32::openai"


def jpeg(path, size: tuple[int, int] | None = None, fmt: str = "JPEG") -> bytes:
    image = Image.open(path).convert("RGB")
    if size is not None:
        image = image.resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def twelve_megapixels(photo_paths) -> list[bytes]:
    return [jpeg(path, (4000, 3000)) for path in photo_paths[:4]]


def test_large_jpegs_decode_at_the_smallest_scale_still_twice_the_input(photo_paths) -> None:
    large = jpeg(photo_paths[0], (2000, 1500))
    assert decode_image(large).size == (2000, 1500)
    assert decode_image(large, draft_edge=448).size == (1000, 750)  # 1/2; 1/4 would be 375 < 448
    assert decode_image(jpeg(photo_paths[0], (4000, 3000)), draft_edge=448).size == (1000, 750)  # 1/4
    small = jpeg(photo_paths[0], (800, 600))
    assert decode_image(small, draft_edge=448).size == (800, 600)  # under twice the edge: whole
    png = jpeg(photo_paths[0], (2000, 1500), fmt="PNG")
    assert decode_image(png, draft_edge=448).size == (2000, 1500)  # only JPEG decoders scale
    with pytest.raises(InvalidInput, match="exceeds the limit"):  # the header check still comes first
        decode_image(large, draft_edge=448, limits=ImageLimits(max_pixels=1_000_000))


def test_fast_path_vectors_are_close_to_the_exact_ones(encoder_for, twelve_megapixels, photo_paths) -> None:
    from clipserve.encoder import Encoder

    exact = encoder_for(NAME, "onnx")
    preprocess = ImagePreprocessor(get_spec(NAME))
    with Encoder(NAME, weights=exact.info()["weights"], fast_decode=True) as fast:
        got, expected = fast.encode_image(twelve_megapixels), exact.encode_image(twelve_megapixels)
        assert cosines(got, expected).min() >= 0.999
        small = [path.read_bytes() for path in photo_paths]  # at most 1000 px: decoded whole, exact
        assert np.array_equal(fast.encode_image(small), exact.encode_image(small))
    for data in twelve_megapixels:  # the model's input pixels differ by about a level on average
        fast_rgb = preprocess.rgb(decode_image(data, draft_edge=448)).astype(np.int16)
        exact_rgb = preprocess.rgb(decode_image(data)).astype(np.int16)
        assert np.abs(fast_rgb - exact_rgb).mean() < 2.0
