"""Image decoding and CLIP preprocessing, pixel-exact to open_clip's eval transform.

open_clip (through torchvision) resizes the image in its own Pillow mode, centre-crops, converts to
RGB, scales to [0, 1] and normalises; this module does the same steps with Pillow and numpy only.

Decoding is guarded: only the formats in :data:`WANTED_FORMATS` are opened (no PostScript through
Ghostscript, no rarely used decoders), the pixel count and side ratio are checked from the header
before any pixel is decoded, a JPEG's scans are counted before decoding, a decode past its deadline
is stopped between two reads of its data, its memory is reserved from the process's decode budget
(:mod:`clipserve.preprocess.budget`), and for extreme side ratios the resize computes only the
region the centre crop keeps, so a tiny 1 x 10,000,000 PNG is refused and a 1 x 100 one costs no
more than a photo.
"""

from __future__ import annotations

import bisect
import io
import logging
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from clipserve.errors import InvalidInput, echo
from clipserve.inputs import IMAGE_SUFFIXES
from clipserve.preprocess.budget import Deadline, DecodeBudget, DecodeTimeout
from clipserve.zoo import ModelSpec

log = logging.getLogger(__name__)

RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
JPEG_FORMATS = frozenset({"JPEG", "MPO"})
"""Pillow's names of JPEG files: their decoder can scale down while decoding (libjpeg's DCT scaling
by 1/2, 1/4, 1/8), and torchvision decodes them as tensors."""
DRAFT_MARGIN = 2
"""The fast decode path keeps at least this many times the model's input on the short side."""
EXACT_RESIZE_MAX_RATIO = 16
"""Images whose resized size is at most this many crops are resized whole (pixel-exact to open_clip)."""
WANTED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "HEIF")
"""Formats users send; those this Pillow build (with plugins such as pillow-heif) can open are allowed."""


def allowed_formats() -> tuple[str, ...]:
    """The formats :func:`decode_image` opens: :data:`WANTED_FORMATS` this Pillow build has."""
    Image.init()
    return tuple(f for f in WANTED_FORMATS if f in Image.OPEN)


MAX_JPEG_SCANS = 100
"""Most scans (SOS markers) a JPEG may hold. Baseline JPEGs have 1 to 4 and progressive encoders
write about 10; each scan is a pass over every block of the image, so a file repeating a scan 1,000
times costs minutes of decoding for a few hundred kilobytes."""
JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
"""The next marker after a scan's data: FF, then neither a stuffed zero, a restart marker nor fill."""
STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2}
"""Bytes per pixel of Pillow's storage of a mode; every other mode takes 4."""
ALPHA_MODES = frozenset({"LA", "PA", "RGBA"})
"""Modes that the resize copies once more (premultiplied alpha)."""
DECODER_BYTES = {"WEBP": 17.0, "AVIF": 10.0, "HEIF": 10.0}
"""Bytes per pixel that these decoders hold at their peak (their own buffers, then Pillow's copy and
the resize), measured on 7000 x 7000 images (16.1 and 9.3 B/px; ``tests/test_decode_memory.py``)."""
ESTIMATE_MARGIN = 1.1
DECODE_OVERHEAD = 8 * 1024 * 1024


@dataclass(frozen=True)
class ImageLimits:
    """What an image may cost: its size, checked from its header before decoding; the time its
    decode may take; and the budget its decode memory is reserved from (None: no budget)."""

    max_pixels: int = 50_000_000
    max_aspect_ratio: float = 100.0
    max_decode_s: float = 10.0
    budget: DecodeBudget | None = None

    def check(self, size: tuple[int, int], index: int | None) -> None:
        width, height = size
        if width <= 0 or height <= 0:
            raise InvalidInput(f"image has no pixels ({width}x{height})", index)
        if width * height > self.max_pixels:
            raise InvalidInput(
                f"image of {width}x{height} = {width * height} pixels exceeds the limit of {self.max_pixels}",
                index,
            )
        if max(width, height) / min(width, height) > self.max_aspect_ratio:
            raise InvalidInput(
                f"image of {width}x{height} has a side ratio over the limit of {self.max_aspect_ratio:g}",
                index,
            )

    def allow_in_pillow(self) -> None:
        """Raise Pillow's own bomb limit (a process-wide setting) when ``max_pixels`` is above it.

        Pillow refuses images over twice its ``MAX_IMAGE_PIXELS``; clipserve checks its own limit
        first, so Pillow's may only ever be raised to it, never lowered.
        """
        if Image.MAX_IMAGE_PIXELS is not None and self.max_pixels > Image.MAX_IMAGE_PIXELS:
            log.info("raising PIL.Image.MAX_IMAGE_PIXELS to max_pixels=%d", self.max_pixels)
            Image.MAX_IMAGE_PIXELS = self.max_pixels


def decode_image(
    source: bytes | str | Path | Image.Image | np.ndarray,
    index: int | None = None,
    limits: ImageLimits = ImageLimits(),
    draft_edge: int | None = None,
) -> Image.Image:
    """Decode raw bytes, a file path, a PIL image or an ``[H, W, 3]`` uint8 RGB array.

    ``draft_edge`` (the fast path, opt-in): a JPEG whose short side is at least twice this is
    decoded at the smallest of libjpeg's scales (1/2, 1/4, 1/8) that keeps its short side at least
    ``draft_edge``; fewer pixels are decoded, and the result is no longer pixel-exact.

    Raises:
        InvalidInput: corrupt, truncated or non-image data, a format outside the allow-list, more
            than ``limits.max_pixels`` pixels or a too extreme side ratio (checked from the header),
            a JPEG of more than :data:`MAX_JPEG_SCANS` scans, a decode past ``limits.max_decode_s``,
            or an array of the wrong shape or dtype. Every decoder failure becomes this error.
    """
    with decoded_image(source, index, limits, draft_edge) as image:
        return image


@contextmanager
def decoded_image(
    source: bytes | str | Path | Image.Image | np.ndarray,
    index: int | None = None,
    limits: ImageLimits = ImageLimits(),
    draft_edge: int | None = None,
) -> Iterator[Image.Image]:
    """:func:`decode_image` as a context: the decoded image, while ``limits.budget`` holds what its
    decode was estimated to need (so that the work done on it in the block counts too)."""
    if isinstance(source, np.ndarray):
        image = _image_from_array(source, index)
        limits.check(image.size, index)
        yield image
        return
    if isinstance(source, Image.Image):
        limits.check(source.size, index)
        yield source
        return
    deadline = Deadline(limits.max_decode_s)
    with _stream(source, index, deadline) as stream:
        try:
            image = Image.open(stream, formats=allowed_formats())
            limits.check(image.size, index)
            # Before any draft: a scaled decode of a progressive JPEG still buffers every coefficient.
            reservation = limits.budget.reserve(decode_cost(image), index) if limits.budget else nullcontext()
            if image.format in JPEG_FORMATS:
                stream.stop_at(_jpeg_scans(stream.data, index))
                if draft_edge is not None:
                    _draft(image, draft_edge)
        except InvalidInput:
            raise
        except DecodeTimeout:
            raise deadline.refusal("image", index) from None
        except UnidentifiedImageError as exc:
            raise InvalidInput(
                f"not an image in an accepted format ({', '.join(allowed_formats())})", index
            ) from exc
        except Exception as exc:
            raise InvalidInput(
                f"corrupt or truncated image: {type(exc).__name__}: {echo(str(exc))}", index
            ) from exc
        with reservation:
            deadline.restart()
            try:
                image.load()
            except DecodeTimeout:
                raise deadline.refusal("image", index) from None
            except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, MemoryError…
                raise InvalidInput(
                    f"corrupt or truncated image: {type(exc).__name__}: {echo(str(exc))}", index
                ) from exc
            yield image


def decode_cost(image: Image.Image) -> int:
    """Bytes that decoding and resizing ``image`` (opened, not yet loaded) will hold at the peak,
    estimated from its header: Pillow's storage of its mode (twice for modes with alpha, which the
    resize premultiplies in a copy), a progressive JPEG's coefficient buffer (2 bytes per
    coefficient), or what the WebP and AVIF decoders hold (:data:`DECODER_BYTES`)."""
    per_pixel = STORED_BYTES.get(image.mode, 4) * (2 if image.mode in ALPHA_MODES else 1)
    if image.format in DECODER_BYTES:
        per_pixel = max(per_pixel, DECODER_BYTES[image.format])
    elif image.format in JPEG_FORMATS and image.info.get("progressive"):
        per_pixel += 2 * _coefficients_per_pixel(image)
    return math.ceil(image.width * image.height * per_pixel * ESTIMATE_MARGIN) + DECODE_OVERHEAD


def _coefficients_per_pixel(image: Image.Image) -> float:
    """DCT coefficients per pixel of a JPEG: one per component, fewer for subsampled ones (1.5 for
    the usual 4:2:0 colour), from the sampling factors of its frame header."""
    layers = getattr(image, "layer", None) or [(0, 1, 1, 0)] * len(image.getbands())
    most = max(h for _, h, _, _ in layers) * max(v for _, _, v, _ in layers)
    return sum(h * v for _, h, v, _ in layers) / most


class GuardedStream:
    """The stream a decoder reads: each read first checks the decode's deadline, and, once
    :meth:`stop_at` named a JPEG's scans, ends at the next scan, so that the decoder (which
    works through the data it is given before it asks for more) does at most one scan between
    two checks. ``data`` holds the bytes (read whole for JPEG files, whose scans are counted)."""

    def __init__(self, raw, data: bytes | None, deadline: Deadline) -> None:
        self.raw, self.data, self.deadline = raw, data, deadline
        self.stops: list[int] = []

    def stop_at(self, offsets: list[int]) -> None:
        self.stops = offsets

    def read(self, size: int = -1) -> bytes:
        self.deadline.check()
        if self.stops:
            position = self.raw.tell()
            after = bisect.bisect_right(self.stops, position)
            if after < len(self.stops):
                size = self.stops[after] - position if size < 0 else min(size, self.stops[after] - position)
        return self.raw.read(size)

    def __getattr__(self, name: str):
        return getattr(self.raw, name)


@contextmanager
def _stream(source: bytes | str | Path, index: int | None, deadline: Deadline) -> Iterator[GuardedStream]:
    """A :class:`GuardedStream` over bytes or a file; a JPEG file's bytes are read whole."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        yield GuardedStream(io.BytesIO(data), data, deadline)
        return
    try:
        file = open(source, "rb")  # noqa: SIM115 (closed below, after the decoder is done)
    except FileNotFoundError as exc:
        raise InvalidInput(f"image file not found: {echo(str(source))}", index) from exc
    except OSError as exc:
        raise InvalidInput(
            f"cannot read image file {echo(str(source))}: {type(exc).__name__}", index
        ) from exc
    with file:
        if file.read(3) == b"\xff\xd8\xff":
            file.seek(0)
            data = file.read()
            yield GuardedStream(io.BytesIO(data), data, deadline)
        else:
            file.seek(0)
            yield GuardedStream(file, None, deadline)


def _jpeg_scans(data: bytes | None, index: int | None) -> list[int]:
    """The offsets of a JPEG's scans (its SOS markers), or :class:`InvalidInput` past
    :data:`MAX_JPEG_SCANS`. Marker segments are stepped over by their lengths and a scan's
    entropy-coded data is skipped to the next marker, so bytes that look like a marker inside them
    are not counted. A JPEG of one scan needs no offsets: no walk."""
    if data is None or data.count(b"\xff\xda") <= 1:
        return []
    scans: list[int] = []
    position = 2  # after SOI
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            break  # not a marker: the decoder reports the corruption
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker == 0xD9:  # EOI
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            position += 2
            continue
        end = position + 2 + int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == 0xDA:
            scans.append(position)
            if len(scans) > MAX_JPEG_SCANS:
                raise InvalidInput(
                    f"JPEG with more than {MAX_JPEG_SCANS} scans (progressive JPEGs hold about 10): refused "
                    "before decoding",
                    index,
                )
            found = JPEG_MARKER.search(data, end)
            if found is None:
                break
            end = found.start()
        position = end
    return scans


def _draft(image: Image.Image, edge: int) -> None:
    scale = min(image.size) / edge
    if scale >= 2:
        # Pillow picks the largest reduction whose result is at least the requested size.
        image.draft(image.mode, (math.ceil(image.width / scale), math.ceil(image.height / scale)))


def _image_from_array(array: np.ndarray, index: int | None) -> Image.Image:
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise InvalidInput(
            f"an image array must be uint8 [H, W, 3] RGB, got {array.dtype} {list(array.shape)}", index
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidInput(f"image array has no pixels {list(array.shape)}", index)
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


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
        """Resize (shortest edge or squash) and centre-crop, in the image's own mode.

        The whole image is resized, then cropped, exactly as open_clip does, as long as the resized
        image is at most :data:`EXACT_RESIZE_MAX_RATIO` crops large. Beyond that (side ratios over
        16:1) only the crop's region is resampled (Pillow's ``box``), so a long thin strip costs no
        more than a photo. Pillow then computes the sample positions from the box with different
        floating-point rounding: a few pixels may differ by one level from open_clip's.
        """
        height, width = self.size
        if self.resize_mode == "squash":
            return image if image.size == (width, height) else image.resize((width, height), self.resample)
        resized_w, resized_h = shortest_edge_size(image.size, height)
        left = round((resized_w - width) / 2.0)
        top = round((resized_h - height) / 2.0)
        if resized_w * resized_h <= EXACT_RESIZE_MAX_RATIO * width * height:
            if image.size != (resized_w, resized_h):
                image = image.resize((resized_w, resized_h), self.resample)
            return image.crop((left, top, left + width, top + height))
        scale_x, scale_y = image.width / resized_w, image.height / resized_h
        box = (
            left * scale_x,
            top * scale_y,
            min((left + width) * scale_x, image.width),
            min((top + height) * scale_y, image.height),
        )
        return image.resize((width, height), self.resample, box=box)

    def rgb(self, image: Image.Image) -> np.ndarray:
        """Resized, cropped RGB as uint8 ``[3, H, W]``: a quarter of the float pixels' memory, so
        prepared images wait for the model compactly; :meth:`normalise` finishes the transform."""
        return np.asarray(self.resize_and_crop(image).convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)

    def normalise(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 ``[..., 3, H, W]`` → float32 scaled to [0, 1] and normalised with the model's mean/std."""
        pixels = rgb.astype(np.float32) / np.float32(255)
        return (pixels - self.mean) / self.std

    def __call__(self, image: Image.Image) -> np.ndarray:
        return self.normalise(self.rgb(image))


def shortest_edge_size(size: tuple[int, int], edge: int) -> tuple[int, int]:
    """torchvision's ``Resize(int)`` output size: the short side becomes ``edge``, the long side truncates."""
    width, height = size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(edge * long / short)
    return (edge, new_long) if width <= height else (new_long, edge)


def is_image_path(path: Path) -> bool:
    """True for a file whose suffix is a common image format."""
    return path.suffix.lower() in IMAGE_SUFFIXES
