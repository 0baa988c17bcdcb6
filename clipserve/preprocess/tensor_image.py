"""Image preprocessing as torch tensors on the model's device (``tensor_preprocess``, torch backend).

Baseline colour JPEGs are decoded by torchvision (nvJPEG on a CUDA device, libjpeg-turbo on the
CPU), resized with antialiasing, centre-cropped and normalised as tensors where the model runs, so
on a GPU the pixels never go back to the host. The steps follow :mod:`clipserve.preprocess.image`
(the same output size, crop offsets and interpolation), but the resampling is torchvision's, not
Pillow's: the vectors are close to open_clip's, not pixel-exact. Without antialiasing a 4× downscale
aliases badly (clip-as-service's tensor path measured cosine 0.94 to its PIL path, its issue #904).

Everything else takes the exact path, per item: other formats, grayscale, CMYK and progressive
JPEGs (decoders differ most on those), PIL images and arrays. The header checks (format allow-list,
pixel count, side ratio) run before any decoding, as on the exact path.

On a GPU the JPEGs of a batch are decoded together, in one nvJPEG call on the inference thread
(faster there than one call per image); on the CPU each is decoded on a preparation worker, in
parallel. A batched decode that fails is redone image by image, so that only the corrupt image
fails and its batch-mates are embedded.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as tf

from clipserve.errors import DeviceUnavailable, InvalidInput, echo
from clipserve.preprocess.image import JPEG_FORMATS, ImageLimits, allowed_formats, shortest_edge_size

INTERPOLATION = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}


def takes(data: bytes, limits: ImageLimits, index: int | None) -> int:
    """The pixels of a baseline colour JPEG, checked from its header (the tensor path takes it), or
    0 for what the exact path takes; a JPEG over the limits is :class:`InvalidInput`."""
    try:
        header = Image.open(io.BytesIO(data), formats=allowed_formats())
    except Exception:
        return 0  # not an image in an accepted format: the exact path words the error
    if header.format not in JPEG_FORMATS or header.mode != "RGB" or header.info.get("progressive"):
        return 0
    limits.check(header.size, index)
    return header.width * header.height


def batch_decodes(device: torch.device) -> bool:
    """Whether JPEGs are decoded a batch at a time on ``device``: on a GPU (nvJPEG's batched
    decode), not on the CPU (one decode per preparation worker spreads over the cores)."""
    return device.type == "cuda"


@dataclass(frozen=True)
class EncodedJpeg:
    """A JPEG that :func:`takes` accepted, waiting to be decoded with its batch."""

    data: torch.Tensor
    """its bytes, a uint8 tensor on the host (nvJPEG reads them from there)"""
    index: int | None


class TensorImagePreprocessor:
    """A model's eval transform on ``device``: JPEG bytes or exact uint8 pixels → normalised tensors.

    ``batch_decode`` (default: on CUDA devices) defers decoding to :meth:`decode_batch`, one call
    per batch; otherwise :meth:`decode` decodes each image where it is prepared.
    """

    def __init__(
        self,
        size: tuple[int, int],
        resize_mode: str,
        interpolation: str,
        mean,
        std,
        device,
        batch_decode: bool | None = None,
    ) -> None:
        if resize_mode not in ("shortest", "squash"):
            raise ValueError(f"resize mode {resize_mode!r} is not supported")
        self.size, self.resize_mode = size, resize_mode
        self.interpolation = INTERPOLATION[interpolation]
        self.device = torch.device(device)
        self.batch_decode = batch_decodes(self.device) if batch_decode is None else batch_decode
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._probe()

    def _probe(self) -> None:
        """Decode a tiny JPEG now: a device without a JPEG decoder (nvJPEG) is an error at load,
        never a corrupt-image error on every request."""
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), (200, 100, 50)).save(buffer, format="JPEG")
        try:
            decode_jpeg(torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8), device=self.device)
        except RuntimeError as exc:
            raise DeviceUnavailable(
                f"torchvision cannot decode JPEGs on {self.device} (nvJPEG on CUDA): {exc}; "
                "tensor_preprocess needs it"
            ) from exc

    def prepare(self, data: bytes, index: int | None) -> torch.Tensor | EncodedJpeg:
        """One JPEG that :func:`takes` accepted: decoded now (its resized, cropped uint8
        ``[3, H, W]`` tensor on the device), or kept for :meth:`decode_batch`."""
        if self.batch_decode:
            return EncodedJpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), index)
        return self.decode(data, index)

    def decode(self, data: bytes, index: int | None) -> torch.Tensor:
        """One JPEG → its resized, cropped uint8 ``[3, H, W]`` tensor on the device."""
        encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return self.resize_and_crop(self._decode_one(EncodedJpeg(encoded, index)))

    def decode_batch(self, payloads: Sequence) -> list:
        """The :class:`EncodedJpeg` payloads of a batch decoded in one call and resized, each in its
        place, or the :class:`InvalidInput` of a corrupt one; other payloads are left as they are."""
        positions = [p for p, payload in enumerate(payloads) if isinstance(payload, EncodedJpeg)]
        out: list = list(payloads)
        if not positions:
            return out
        try:
            images = decode_jpeg(
                [payloads[p].data for p in positions], mode=ImageReadMode.RGB, device=self.device
            )
        except torch.OutOfMemoryError:
            raise  # the device's trouble, not the images'
        except RuntimeError:  # no partial results: find the corrupt ones image by image
            images = []
            for p in positions:
                try:
                    images.append(self._decode_one(payloads[p]))
                except InvalidInput as exc:
                    images.append(exc)
        for p, image in zip(positions, images, strict=True):
            out[p] = image if isinstance(image, InvalidInput) else self.resize_and_crop(image)
        return out

    def _decode_one(self, jpeg: EncodedJpeg) -> torch.Tensor:
        try:
            return decode_jpeg(jpeg.data, mode=ImageReadMode.RGB, device=self.device)
        except torch.OutOfMemoryError:
            raise  # the device's trouble, not the image's: not a corrupt-image error
        except RuntimeError as exc:
            raise InvalidInput(
                f"corrupt or truncated image: {echo(str(exc).splitlines()[-1])}", jpeg.index
            ) from exc

    def resize_and_crop(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 ``[3, h, w]`` → ``[3, H, W]``: the exact path's sizes and crop, antialiased resampling."""
        height, width = self.size
        if self.resize_mode == "squash":
            return tf.resize(image, [height, width], self.interpolation, antialias=True)
        resized_w, resized_h = shortest_edge_size((image.shape[2], image.shape[1]), height)
        if (resized_w, resized_h) != (image.shape[2], image.shape[1]):
            image = tf.resize(image, [resized_h, resized_w], self.interpolation, antialias=True)
        left = round((resized_w - width) / 2.0)
        top = round((resized_h - height) / 2.0)
        return image[:, top : top + height, left : left + width]

    def batch(self, payloads: list[torch.Tensor | np.ndarray]) -> torch.Tensor:
        """Prepared images → normalised float32 ``[n, 3, H, W]`` on the device, in order: uint8
        tensors of this path and uint8 arrays of the exact path are normalised here; float arrays
        are pixels the caller preprocessed."""
        tensors = [
            p if isinstance(p, torch.Tensor) else torch.tensor(p, device=self.device) for p in payloads
        ]
        if all(t.dtype == torch.uint8 for t in tensors):
            return self.normalise(torch.stack(tensors))
        return torch.stack(
            [self.normalise(t[None])[0] if t.dtype == torch.uint8 else t.float() for t in tensors]
        )

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 ``[n, 3, H, W]`` → float32 scaled to [0, 1] and normalised with the model's mean/std."""
        return (pixels.float() / 255.0 - self.mean) / self.std
