"""Image preprocessing of Hugging Face transformers models, from their ``preprocessor_config.json``,
pixel-exact to transformers' PIL image processors (``CLIPImageProcessorPil``, ``SiglipImageProcessorPil``,
``Siglip2ImageProcessorPil``…).

Where transformers' arithmetic differs from open_clip's (:mod:`clipserve.preprocess.image`):

- the image becomes RGB first, transparency composited onto white (open_clip resizes in the
  image's own mode and drops the alpha channel after the crop);
- the centre crop starts at ``(size - crop) // 2`` (open_clip rounds half to even: a margin of 35
  pixels starts at 17 here, at 18 there), and an image smaller than the crop is padded with zeros;
- the resize may take a shortest edge other than the crop size (``size`` and ``crop_size``), or a
  fixed height and width (SigLIP), or (SigLIP 2's NaFlex) the largest size whose patches fit a
  budget;
- rescaling multiplies by ``rescale_factor`` in float64 and normalising runs in float32.

The resize size rule (``int(edge × long / short)``) is the same in both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

RESAMPLE = {int(f): f for f in Image.Resampling}


@dataclass(frozen=True)
class HfImageSettings:
    """What a ``preprocessor_config.json`` says about images (transformers' defaults where silent)."""

    shortest_edge: int | None = None
    longest_edge: int | None = None
    height: int | None = None
    width: int | None = None
    crop: tuple[int, int] | None = None
    """``(height, width)`` of the centre crop; None: no crop."""
    resample: int = int(Image.Resampling.BICUBIC)
    rescale_factor: float | None = 1 / 255
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    convert_rgb: bool = True
    patch_size: int | None = None
    """SigLIP 2 (NaFlex): images become patches of this side, at most ``max_num_patches`` of them."""
    max_num_patches: int | None = None

    @classmethod
    def from_config(cls, config: dict) -> HfImageSettings:
        """From a ``preprocessor_config.json``'s contents."""
        size = config.get("size") or {}
        if isinstance(size, int):
            size = {"shortest_edge": size}
        crop = config.get("crop_size") or {}
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        do_crop = config.get("do_center_crop", bool(crop))
        return cls(
            shortest_edge=size.get("shortest_edge") if config.get("do_resize", True) else None,
            longest_edge=size.get("longest_edge") if config.get("do_resize", True) else None,
            height=size.get("height") if config.get("do_resize", True) else None,
            width=size.get("width") if config.get("do_resize", True) else None,
            crop=(crop["height"], crop["width"]) if do_crop and crop else None,
            resample=int(config.get("resample", Image.Resampling.BICUBIC)),
            rescale_factor=config.get("rescale_factor", 1 / 255) if config.get("do_rescale", True) else None,
            mean=tuple(config["image_mean"]) if config.get("do_normalize", True) else None,
            std=tuple(config["image_std"]) if config.get("do_normalize", True) else None,
            convert_rgb=config.get("do_convert_rgb", True),
            patch_size=config.get("patch_size") if "max_num_patches" in config else None,
            max_num_patches=config.get("max_num_patches"),
        )

    @property
    def output_size(self) -> tuple[int, int] | None:
        """``(height, width)`` of every prepared image, when fixed (not for NaFlex)."""
        if self.patch_size:
            return None
        if self.crop:
            return self.crop
        if self.height and self.width:
            return (self.height, self.width)
        return None


def to_rgb(image: Image.Image) -> Image.Image:
    """transformers' ``convert_to_rgb``: transparency composited onto a white background."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def shortest_edge_size(width: int, height: int, edge: int) -> tuple[int, int]:
    """``(width, height)``: the short side ``edge``, the long one truncated (transformers' size rule)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(edge * long / short)
    return (edge, new_long) if width <= height else (new_long, edge)


def aspect_ratio_size(width: int, height: int, edge: int, longest: int) -> tuple[int, int]:
    """``(width, height)`` for a shortest edge capped by a longest one (transformers'
    ``get_size_with_aspect_ratio``)."""
    low, high = float(min(width, height)), float(max(width, height))
    if high / low * edge > longest:
        edge = round(longest * low / high)
    if (height <= width and height == edge) or (width <= height and width == edge):
        return width, height
    if width < height:
        return edge, int(edge * height / width)
    return int(edge * width / height), edge


def naflex_size(height: int, width: int, patch: int, max_patches: int, eps: float = 1e-5) -> tuple[int, int]:
    """SigLIP 2's ``(height, width)``: the largest scale, found by bisection as transformers does,
    whose sides (rounded up to whole patches, at least one) hold at most ``max_patches`` patches."""

    def scaled(scale: float, side: int) -> int:
        return int(max(patch, math.ceil(side * scale / patch) * patch))

    low, high = eps / 10, 100.0
    while high - low >= eps:
        scale = (low + high) / 2
        if (scaled(scale, height) / patch) * (scaled(scale, width) / patch) <= max_patches:
            low = scale
        else:
            high = scale
    return scaled(low, height), scaled(low, width)


class HfImagePreprocessor:
    """A transformers model's image processing: PIL image → uint8 ``[3, H, W]`` (resized, cropped),
    then :meth:`normalise` per batch; for NaFlex models :meth:`patches`, then :meth:`normalise_patches`."""

    def __init__(self, settings: HfImageSettings) -> None:
        self.settings = settings
        self.resample = RESAMPLE[settings.resample]
        self.mean = None if settings.mean is None else np.asarray(settings.mean, np.float32).reshape(3, 1, 1)
        self.std = None if settings.std is None else np.asarray(settings.std, np.float32).reshape(3, 1, 1)

    def resized(self, image: Image.Image) -> Image.Image:
        """RGB (transformers' way) and resized."""
        s = self.settings
        if s.convert_rgb:
            image = to_rgb(image)
        if s.patch_size and s.max_num_patches:
            height, width = naflex_size(image.height, image.width, s.patch_size, s.max_num_patches)
            size = (width, height)
        elif s.shortest_edge and s.longest_edge:
            size = aspect_ratio_size(image.width, image.height, s.shortest_edge, s.longest_edge)
        elif s.shortest_edge:
            size = shortest_edge_size(image.width, image.height, s.shortest_edge)
        elif s.height and s.width:
            size = (s.width, s.height)
        else:
            size = image.size
        return image if image.size == size else image.resize(size, self.resample)

    def rgb(self, image: Image.Image) -> np.ndarray:
        """Resized and centre-cropped uint8 ``[3, H, W]`` (zero-padded where the crop passes the image)."""
        pixels = np.asarray(self.resized(image).convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)
        if self.settings.crop is None:
            return np.ascontiguousarray(pixels)
        return center_crop(pixels, self.settings.crop)

    def normalise(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 ``[..., 3, H, W]`` → float32, rescaled in float64 (as transformers) and normalised."""
        s = self.settings
        pixels = rgb.astype(np.float32)
        if s.rescale_factor is not None:
            pixels = (rgb.astype(np.float64) * s.rescale_factor).astype(np.float32)
        if self.mean is not None:
            pixels = (pixels - self.mean) / self.std
        return pixels

    def patches(self, image: Image.Image) -> tuple[np.ndarray, tuple[int, int]]:
        """NaFlex: uint8 ``[patches, patch × patch × 3]`` (row-major patches, each channels-last),
        and the grid ``(rows, columns)``; :meth:`normalise_patches` finishes them."""
        patch = self.settings.patch_size
        pixels = np.asarray(self.resized(image).convert("RGB"), np.uint8).transpose(2, 0, 1)
        channels, height, width = pixels.shape
        rows, columns = height // patch, width // patch
        grid = pixels.reshape(channels, rows, patch, columns, patch).transpose(1, 3, 2, 4, 0)
        return np.ascontiguousarray(grid.reshape(rows * columns, -1)), (rows, columns)

    def normalise_patches(self, patches: np.ndarray) -> np.ndarray:
        """uint8 patches ``[..., patch × patch × 3]`` → float32, as :meth:`normalise` does per pixel
        (the channel is the last axis of each patch)."""
        s = self.settings
        pixels = patches.astype(np.float32)
        if s.rescale_factor is not None:
            pixels = (patches.astype(np.float64) * s.rescale_factor).astype(np.float32)
        if self.mean is not None:
            shape = pixels.shape
            per_channel = pixels.reshape(*shape[:-1], -1, 3)
            mean, std = self.mean.reshape(3), self.std.reshape(3)
            pixels = ((per_channel - mean) / std).reshape(shape)
        return pixels


def center_crop(pixels: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    """transformers' ``center_crop`` of ``[C, H, W]``: offsets floor-divided; zero padding, centred
    (rounded up), where the crop is larger than the image."""
    crop_height, crop_width = crop
    channels, height, width = pixels.shape
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    if top >= 0 and left >= 0:
        return np.ascontiguousarray(pixels[:, top : top + crop_height, left : left + crop_width])
    new_height, new_width = max(crop_height, height), max(crop_width, width)
    padded = np.zeros((channels, new_height, new_width), dtype=pixels.dtype)
    top_pad, left_pad = math.ceil((new_height - height) / 2), math.ceil((new_width - width) / 2)
    padded[:, top_pad : top_pad + height, left_pad : left_pad + width] = pixels
    top, left = top + top_pad, left + left_pad
    bottom, right = top + crop_height, left + crop_width
    return np.ascontiguousarray(
        padded[:, max(0, top) : min(new_height, bottom), max(0, left) : min(new_width, right)]
    )
