import io

import numpy as np
import pytest
from PIL import Image

from clipserve.errors import InvalidInput
from clipserve.preprocess.image import ImageLimits, ImagePreprocessor, decode_image
from clipserve.zoo import get_spec
from tests.conftest import open_clip_transform

MODES = ["RGB", "L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1"]
# shortest-edge bicubic 224, shortest-edge bicubic 336, squash bilinear 224 (PE-style)
SPECS = ["ViT-B-32::openai", "ViT-L-14-336::openai", "PE-Core-B-16::meta"]


@pytest.mark.parametrize("name", SPECS)
def test_pixels_equal_open_clip_transform_for_every_photo_and_mode(name: str, photo_paths) -> None:
    spec = get_spec(name)
    reference = open_clip_transform(spec)
    ours = ImagePreprocessor(spec)
    checked = 0
    for path in photo_paths:
        original = decode_image(path)
        for mode in [original.mode, *MODES]:
            image = original.convert(mode)
            expected = reference(image).numpy()
            got = ours(image)
            assert got.dtype == np.float32 and got.shape == (3, *spec.image_size)
            np.testing.assert_array_equal(got, expected, err_msg=f"{path.name} in mode {mode}")
            checked += 1
    assert checked == len(photo_paths) * (len(MODES) + 1)


def test_squash_spec_is_really_squash() -> None:
    spec = get_spec(SPECS[2])
    assert (spec.resize_mode, spec.interpolation) == ("squash", "bilinear")


def test_photos_cover_several_pillow_modes(photo_paths) -> None:
    modes = {decode_image(p).mode for p in photo_paths}
    assert {"RGB", "L"} <= modes and len(modes) >= 3


def test_small_and_exact_size_images() -> None:
    spec = get_spec("ViT-B-32::openai")
    reference, ours = open_clip_transform(spec), ImagePreprocessor(spec)
    rng = np.random.default_rng(0)
    for shape in [(224, 224, 3), (1, 1, 3), (5, 900, 3), (300, 224, 3), (223, 225, 3)]:
        image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        np.testing.assert_array_equal(ours(image), reference(image).numpy(), err_msg=str(shape))


def _png_bytes(size=(32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_decode_sources_agree(photo_paths) -> None:
    path = photo_paths[0]
    data = path.read_bytes()
    from_path = np.asarray(decode_image(path).convert("RGB"))
    from_bytes = np.asarray(decode_image(data).convert("RGB"))
    from_array = np.asarray(decode_image(from_path))
    np.testing.assert_array_equal(from_path, from_bytes)
    np.testing.assert_array_equal(from_path, from_array)


def test_corrupt_image_names_the_item(photo_paths) -> None:
    data = bytearray(photo_paths[0].read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = b"\xff" * 64
    with pytest.raises(InvalidInput, match=r"item 7: corrupt or truncated image") as info:
        decode_image(bytes(data), index=7)
    assert info.value.index == 7


def test_truncated_jpeg(photo_paths) -> None:
    jpeg = next(p for p in photo_paths if p.suffix == ".jpg").read_bytes()
    with pytest.raises(InvalidInput, match="corrupt or truncated") as info:
        decode_image(jpeg[: len(jpeg) // 2], index=3)
    assert info.value.index == 3


def test_non_image_bytes() -> None:
    with pytest.raises(InvalidInput, match=r"item 0: not an image"):
        decode_image(b"%PDF-1.4 definitely not a picture", index=0)


def test_missing_file() -> None:
    with pytest.raises(InvalidInput, match="not found"):
        decode_image("/nonexistent/picture.png", index=1)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = _png_bytes(size=(4000, 4000))  # compresses to a few KB
    assert len(bomb) < 100_000
    with pytest.raises(
        InvalidInput, match=r"item 2: image of 4000x4000 = 16000000 pixels exceeds the limit of 1000000"
    ):
        decode_image(bomb, index=2, limits=ImageLimits(max_pixels=1_000_000))


def test_pillow_bomb_guard_is_reported_too() -> None:
    huge = _png_bytes(size=(20000, 20000))  # above Pillow's own 2x MAX_IMAGE_PIXELS guard
    with pytest.raises(InvalidInput, match=r"item 0: corrupt or truncated image: DecompressionBombError"):
        decode_image(huge, index=0, limits=ImageLimits(max_pixels=10**12))


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((10, 10), np.uint8),
        np.zeros((10, 10, 4), np.uint8),
        np.zeros((10, 10, 3), np.uint16),
        np.zeros((0, 10, 3), np.uint8),
    ],
)
def test_wrong_array_shape_or_dtype(array: np.ndarray) -> None:
    with pytest.raises(InvalidInput, match="item 5:"):
        decode_image(array, index=5)
