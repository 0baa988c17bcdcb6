"""Turn user inputs into :class:`Item` objects with a modality (``text`` or ``image``).

Rules, per input: ``str`` that is a data URI or names an existing file → image; an ``http(s)://``
string → image only when URLs are allowed; any other ``str`` → text; ``bytes``, ``Path``,
``PIL.Image`` and ``[H, W, 3]`` uint8 arrays → image; float ``[3, H, W]`` arrays (or torch tensors)
→ already-preprocessed image pixels.
"""

from __future__ import annotations

import base64
import binascii
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from clipserve.errors import InvalidInput

Modality = Literal["text", "image"]
Kind = Literal["text", "path", "bytes", "url", "pil", "array", "pixels"]


@dataclass(frozen=True)
class Item:
    """One input, classified: ``index`` is its position in the user's list."""

    index: int
    modality: Modality
    kind: Kind
    value: Any


def to_items(inputs: list[Any], allow_url: bool = False) -> list[Item]:
    """Classify every input; raises :class:`InvalidInput` naming the first unusable one."""
    return [to_item(i, value, allow_url) for i, value in enumerate(inputs)]


def to_item(index: int, value: Any, allow_url: bool = False) -> Item:
    """Classify one input (see the module docstring for the rules)."""
    if isinstance(value, str):
        return _item_from_string(index, value, allow_url)
    if isinstance(value, bytes | bytearray | memoryview):
        return Item(index, "image", "bytes", bytes(value))
    if isinstance(value, os.PathLike):
        return Item(index, "image", "path", Path(value))
    if isinstance(value, Image.Image):
        return Item(index, "image", "pil", value)
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.dtype == np.uint8:
            return Item(index, "image", "array", value)
        if np.issubdtype(value.dtype, np.floating) and value.ndim == 3:
            return Item(index, "image", "pixels", value)
        raise InvalidInput(
            f"arrays must be uint8 [H, W, 3] RGB images or float [3, H, W] preprocessed pixels, "
            f"got {value.dtype} {list(value.shape)}",
            index,
        )
    raise InvalidInput(f"unsupported input type {type(value).__name__}", index)


def _item_from_string(index: int, value: str, allow_url: bool) -> Item:
    if value.startswith("data:"):
        return Item(index, "image", "bytes", decode_data_uri(value, index))
    if value.startswith(("http://", "https://")) and allow_url:
        return Item(index, "image", "url", value)
    if _names_file(value):
        return Item(index, "image", "path", Path(value))
    return Item(index, "text", "text", value)


def _names_file(value: str) -> bool:
    if not value or len(value) > 4096 or "\n" in value or "\0" in value:
        return False
    try:
        return Path(value).expanduser().is_file()
    except OSError:
        return False


def decode_data_uri(uri: str, index: int | None = None) -> bytes:
    """The payload of an image ``data:`` URI (base64 or percent-encoded)."""
    header, sep, payload = uri.partition(",")
    if not sep:
        raise InvalidInput("malformed data URI: no ',' separates header and data", index)
    media_type = header[len("data:") :].split(";")[0]
    if media_type and not media_type.startswith("image/"):
        raise InvalidInput(f"data URI of type {media_type!r} is not an image", index)
    if header.endswith(";base64"):
        try:
            return base64.b64decode("".join(payload.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput(f"data URI has invalid base64: {exc}", index) from exc
    return urllib.parse.unquote_to_bytes(payload)
