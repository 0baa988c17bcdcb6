"""The one sniffer: every input, from any face, becomes an :class:`Item` with a modality.

Library values (:func:`to_item`): a ``str`` that is a data URI or names an existing file is an
image (or audio, by its content); an ``http(s)://`` string is a URL only when URLs are allowed; a
``str`` that looks like a path (a media suffix, or a path's start or folder) but names no file is
refused, not embedded as text; any other ``str`` is text. ``bytes`` and ``Path`` are sniffed by
content (image or audio); ``PIL`` images and ``[H, W, 3]`` uint8 arrays are images; float
``[3, H, W]`` arrays (or torch tensors) are already-preprocessed image pixels; float ``[n]`` or
``[n, channels]`` arrays and int16 arrays are audio samples at 44.1 kHz
(:meth:`clipserve.Encoder.encode_audio` takes another rate).

Wire values (:func:`wire_item`, the server's ``{"text": ...}``/``{"image": ...}`` fields and
OpenAI's strings) stay undecoded here: base64 and data URIs are decoded later, in a worker thread,
so no request's payload is processed on the server's event loop.
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

from clipserve.errors import InvalidInput, echo

Kind = Literal["text", "path", "bytes", "base64", "data_uri", "url", "pil", "array", "pixels", "waveform"]
AUDIO_RATE = 44_100
"""The sample rate assumed for audio arrays given without one."""
URL_SCHEMES = ("http://", "https://")
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif", ".heic", ".heif"}
)
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3"})
PATH_STARTS = ("/", "./", "../", "~/")
ACCEPTED_ARRAYS = (
    "arrays are images as uint8 [H, W, 3] RGB, float [3, H, W] preprocessed pixels (or one "
    "[N, 3, H, W] batch), or audio samples as float in [-1, 1] or int16, [n] or [n, channels]"
)


@dataclass(frozen=True)
class Item:
    """One input, classified: ``index`` is its position in the user's list."""

    index: int
    modality: str
    kind: Kind
    value: Any


def to_item(index: int, value: Any, allow_url: bool = False) -> Item:
    """Classify one library value (see the module docstring for the rules)."""
    if isinstance(value, str):
        return _item_from_string(index, value, allow_url)
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        return Item(index, sniff_bytes(data), "bytes", data)
    if isinstance(value, os.PathLike):
        path = Path(value)
        return Item(index, sniff_file(path), "path", path)
    if isinstance(value, Image.Image):
        return Item(index, "image", "pil", value)
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.dtype == np.uint8:
            return Item(index, "image", "array", value)
        if np.issubdtype(value.dtype, np.floating) and value.ndim == 3:
            return Item(index, "image", "pixels", value)
        if (np.issubdtype(value.dtype, np.floating) or value.dtype == np.int16) and value.ndim in (1, 2):
            return Item(index, "audio", "waveform", (value, AUDIO_RATE))
        raise InvalidInput(
            f"an array of {value.dtype} {list(value.shape)} has none of the accepted shapes: "
            + ACCEPTED_ARRAYS,
            index,
        )
    raise InvalidInput(f"unsupported input type {type(value).__name__}", index)


def _item_from_string(index: int, value: str, allow_url: bool) -> Item:
    if value.startswith("data:"):
        return Item(index, data_uri_modality(value, index), "data_uri", value)
    if value.startswith(URL_SCHEMES) and allow_url:
        return Item(index, "image", "url", value)
    if _names_file(value):
        path = Path(value).expanduser()
        return Item(index, sniff_file(path), "path", path)
    if _looks_like_a_path(value):
        as_text = "to embed the string itself, pass it as text (encode_text, or {'text': ...})"
        if value.startswith(URL_SCHEMES):
            raise InvalidInput(
                f"{echo(value)!r} is a URL of a media file, and URLs are off: allow_url=True (--allow-url) "
                f"fetches it; {as_text}",
                index,
            )
        raise InvalidInput(
            f"{echo(value)!r} looks like a file path, but no such file exists (working directory "
            f"{os.getcwd()}): check the path; {as_text}",
            index,
        )
    return Item(index, "text", "text", value)


def _looks_like_a_path(value: str) -> bool:
    """A string meant as a file: one line without spaces that ends in an image or audio suffix,
    starts like a path (``/``, ``./``, ``../``, ``~/``), or sits in a folder that exists."""
    if not value or len(value) > 4096 or any(c.isspace() for c in value.strip()):
        return False
    path = Path(value.strip())
    try:
        in_a_folder = os.sep in value and path.parent != Path(".") and path.expanduser().parent.is_dir()
    except (OSError, ValueError):
        in_a_folder = False
    return (
        path.suffix.lower() in IMAGE_SUFFIXES | AUDIO_SUFFIXES or value.startswith(PATH_STARTS) or in_a_folder
    )


def wire_item(index: int, modality: str, value: str, allow_url: bool) -> Item:
    """An item from the server's JSON: ``text`` as is; media as a data URI, a URL or base64."""
    if modality == "text":
        return Item(index, "text", "text", value)
    if value.startswith("data:"):
        declared = data_uri_modality(value, index)
        if declared != modality:
            raise InvalidInput(f"the {modality} field holds a data URI of {declared}", index)
        return Item(index, modality, "data_uri", value)
    if value.startswith(URL_SCHEMES):
        if not allow_url:
            raise InvalidInput("URL inputs are disabled on this server (start it with --allow-url)", index)
        return Item(index, modality, "url", value)
    return Item(index, modality, "base64", value)


def openai_item(index: int, value: str, allow_url: bool) -> Item:
    """An item of OpenAI's ``/v1/embeddings`` ``input``: a media data URI or URL, else text."""
    if value.startswith("data:"):
        return Item(index, data_uri_modality(value, index), "data_uri", value)
    if allow_url and value.startswith(URL_SCHEMES):
        return Item(index, "image", "url", value)
    return Item(index, "text", "text", value)


def uri_kind(uri: str) -> Literal["data_uri", "url", "path"]:
    """How a document's ``uri`` names its content, told without reading anything: a data URI, an
    http(s) URL, or a local path (``file://`` or plain)."""
    if uri.startswith("data:"):
        return "data_uri"
    if uri.startswith(URL_SCHEMES):
        return "url"
    return "path"


def _names_file(value: str) -> bool:
    if not value or len(value) > 4096 or "\n" in value or "\0" in value:
        return False
    try:
        return Path(value).expanduser().is_file()
    except (OSError, ValueError):
        return False


# -- content sniffing -------------------------------------------------------------------------------

AUDIO_SIGNATURES = (
    (0, b"RIFF", 8, b"WAVE"),
    (0, b"fLaC", 0, b""),
    (0, b"OggS", 0, b""),
    (0, b"ID3", 0, b""),
    (4, b"ftypM4A", 0, b""),
)


def sniff_bytes(head: bytes) -> str:
    """``audio`` when the bytes start like an audio file (RIFF/WAVE, fLaC, OggS, ID3, MPEG frame
    sync), else ``image``: the modality decides which decoder reports what is wrong."""
    for offset, magic, offset2, magic2 in AUDIO_SIGNATURES:
        if head[offset : offset + len(magic)] == magic and head[offset2 : offset2 + len(magic2)] == magic2:
            return "audio"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06:
        return "audio"  # an MPEG audio frame header: 11 sync bits and a layer (JPEG starts FF D8)
    return "image"


def sniff_file(path: Path) -> str:
    """The modality of a file, from its first bytes (an unreadable file counts as an image, whose
    decoder then names the problem)."""
    try:
        with open(path, "rb") as f:
            return sniff_bytes(f.read(16))
    except OSError:
        return "image"


def data_uri_modality(uri: str, index: int | None = None) -> str:
    """``image`` or ``audio`` from a data URI's media type (an empty type means image)."""
    header, sep, _ = uri.partition(",")
    if not sep:
        raise InvalidInput("malformed data URI: no ',' separates header and data", index)
    media_type = header[len("data:") :].split(";")[0].strip().lower()
    if not media_type or media_type.startswith("image/"):
        return "image"
    if media_type.startswith("audio/"):
        return "audio"
    raise InvalidInput(f"data URI of type {echo(media_type)!r} is neither an image nor audio", index)


# -- turning sources into bytes (in worker threads) ---------------------------------------------------


def decode_data_uri(uri: str, index: int | None = None) -> bytes:
    """The payload of a ``data:`` URI (base64 or percent-encoded)."""
    header, sep, payload = uri.partition(",")
    if not sep:
        raise InvalidInput("malformed data URI: no ',' separates header and data", index)
    if header.endswith(";base64"):
        return decode_base64(payload, index, "data URI has invalid base64")
    return urllib.parse.unquote_to_bytes(payload)


def decode_base64(text: str, index: int | None = None, problem: str = "invalid base64") -> bytes:
    """Strict base64; whitespace is allowed (``base64`` wraps its output at 76 columns).
    A failure is :class:`InvalidInput` saying ``problem``."""
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{problem}: {echo(str(exc))}", index) from exc
