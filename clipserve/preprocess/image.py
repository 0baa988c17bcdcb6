"""Image decoding and CLIP preprocessing, pixel-exact to open_clip's eval transform.

open_clip (through torchvision) resizes the image in its own Pillow mode, centre-crops, converts to
RGB, scales to [0, 1] and normalises; this module does the same steps with Pillow and numpy only.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from clipserve.errors import InvalidInput
from clipserve.zoo import ModelSpec

DEFAULT_MAX_PIXELS = 100_000_000
RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def decode_image(
    source: bytes | str | Path | Image.Image | np.ndarray,
    index: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode raw bytes, a file path, a PIL image or an ``[H, W, 3]`` uint8 RGB array.

    Raises:
        InvalidInput: corrupt, truncated or non-image data, more than ``max_pixels`` pixels
            (decompression bombs), or an array of the wrong shape or dtype.
    """
    if isinstance(source, np.ndarray):
        return _image_from_array(source, index)
    if isinstance(source, Image.Image):
        _check_pixels(source, index, max_pixels)
        return source
    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray | memoryview) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(stream)
            _check_pixels(image, index, max_pixels)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidInput(f"image too large to decode safely ({exc})", index) from exc
    except UnidentifiedImageError as exc:
        raise InvalidInput("not an image: Pillow cannot identify the data", index) from exc
    except FileNotFoundError as exc:
        raise InvalidInput(f"image file not found: {source}", index) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidInput(f"corrupt or truncated image: {exc}", index) from exc
    return image


def _check_pixels(image: Image.Image, index: int | None, max_pixels: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidInput(
            f"image of {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}", index
        )
    if width == 0 or height == 0:
        raise InvalidInput(f"image has no pixels ({width}x{height})", index)


def _image_from_array(array: np.ndarray, index: int | None) -> Image.Image:
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise InvalidInput(
            f"an image array must be uint8 [H, W, 3] RGB, got {array.dtype} {list(array.shape)}", index
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidInput(f"image array has no pixels {list(array.shape)}", index)
    return Image.fromarray(array, mode="RGB")


class ImagePreprocessor:
    """A model's eval transform: PIL image → float32 ``[3, H, W]``, identical to open_clip's."""

    def __init__(self, spec: ModelSpec) -> None:
        if spec.resize_mode not in ("shortest", "squash"):
            raise ValueError(f"resize mode {spec.resize_mode!r} of {spec.name} is not supported")
        self.size = spec.image_size
        self.resize_mode = spec.resize_mode
        self.resample = RESAMPLE[spec.interpolation]
        self.mean = np.asarray(spec.mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(spec.std, dtype=np.float32).reshape(3, 1, 1)

    def resize_and_crop(self, image: Image.Image) -> Image.Image:
        """Resize (shortest edge or squash) and centre-crop, in the image's own mode."""
        height, width = self.size
        if self.resize_mode == "squash":
            target = (width, height)
        else:
            target = _shortest_edge_size(image.size, height)
        if image.size != target:
            image = image.resize(target, self.resample)
        if image.size != (width, height):
            left = round((image.width - width) / 2.0)
            top = round((image.height - height) / 2.0)
            image = image.crop((left, top, left + width, top + height))
        return image

    def __call__(self, image: Image.Image) -> np.ndarray:
        rgb = np.asarray(self.resize_and_crop(image).convert("RGB"), dtype=np.uint8)
        pixels = rgb.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
        return (pixels - self.mean) / self.std


def _shortest_edge_size(size: tuple[int, int], edge: int) -> tuple[int, int]:
    """torchvision's ``Resize(int)`` output size: the short side becomes ``edge``, the long side truncates."""
    width, height = size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(edge * long / short)
    return (edge, new_long) if width <= height else (new_long, edge)


def is_image_path(path: Path) -> bool:
    """True for a file whose suffix is a common image format."""
    return path.suffix.lower() in IMAGE_SUFFIXES
