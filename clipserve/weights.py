"""Find a model's weights: an explicit path, then the cache dir, then a download (hub, then URL).

Offline with nothing cached raises :class:`WeightsUnavailable` naming every place looked. clipserve
never falls back to random weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from clipserve.cache import touch
from clipserve.errors import WeightsUnavailable
from clipserve.zoo import ModelSpec

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
HUB_FILENAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
ONNX_MARKER = "clipserve.json"
EXPORT_FORMAT = 2
"""Bumped whenever exported graphs change (2: the text tower's last block runs at the end token only)."""
DOWNLOAD_TIMEOUT_S = 60
_SHA256_IN_URL = re.compile(r"/([0-9a-f]{64})/")


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The cache root: ``override``, else ``$CLIPSERVE_CACHE_DIR``, else ``~/.cache/clipserve``."""
    if override is not None:
        return Path(override).expanduser()
    return Path(os.environ.get("CLIPSERVE_CACHE_DIR", "~/.cache/clipserve")).expanduser()


def offline() -> bool:
    """True when downloads are switched off (``CLIPSERVE_OFFLINE`` or ``HF_HUB_OFFLINE`` set to 1)."""
    return any(
        os.environ.get(var, "").lower() in ("1", "true", "yes")
        for var in ("CLIPSERVE_OFFLINE", "HF_HUB_OFFLINE")
    )


def is_current_export(path: Path) -> bool:
    """True for an export directory written by this version's exporter (older cache entries are redone)."""
    return is_onnx_dir(path) and read_export_meta(path).get("export_format") == EXPORT_FORMAT


def is_onnx_dir(path: Path) -> bool:
    """True for a directory written by ``clipserve export``."""
    return path.is_dir() and (path / ONNX_MARKER).is_file()


def checkpoint_cache(spec: ModelSpec, root: Path) -> Path:
    return root / "checkpoints" / spec.arch / spec.tag


def onnx_cache(spec: ModelSpec, root: Path, source: str, precision: str) -> Path:
    """Where the ONNX export of ``spec`` from ``source`` (the tag or a content fingerprint) lives."""
    return root / "onnx" / spec.arch / source / precision


def read_export_meta(path: Path) -> dict:
    """The ``clipserve.json`` of an ONNX export directory."""
    return json.loads((path / ONNX_MARKER).read_text())


@dataclass
class _Search:
    spec: ModelSpec
    looked: list[str]

    def fail(self) -> WeightsUnavailable:
        places = "\n".join(f"  - {place}" for place in self.looked)
        return WeightsUnavailable(
            f"no weights for {self.spec.name}. Looked in:\n{places}\n"
            f"Pass a local checkpoint (.safetensors, .bin, .pt) or an exported ONNX directory: "
            f"Encoder({self.spec.name!r}, weights='/path/to/open_clip_model.safetensors') or "
            f"`clipserve encode --model {self.spec.name} --weights PATH ...`; "
            f"or copy the file into the cache directory named above."
        )


def explicit_weights(spec: ModelSpec, weights: str | os.PathLike[str]) -> Path:
    """Validate a user-given weights path: a checkpoint file or an exported ONNX directory."""
    path = Path(weights).expanduser()
    if is_onnx_dir(path):
        return path
    if path.is_file() and path.suffix in CHECKPOINT_SUFFIXES:
        return path
    why = (
        "does not exist" if not path.exists() else "is neither a checkpoint file nor an ONNX export directory"
    )
    raise _Search(
        spec, [f"explicit weights {path}: {why} (checkpoints end in {', '.join(CHECKPOINT_SUFFIXES)})"]
    ).fail()


def find_checkpoint(spec: ModelSpec, root: Path) -> Path:
    """The cached checkpoint of ``spec``, downloading it when allowed.

    Raises:
        WeightsUnavailable: nothing cached and the download is off or failed.
    """
    search = _Search(spec, [])
    target = checkpoint_cache(spec, root)
    cached = sorted(p for p in target.glob("*") if p.suffix in CHECKPOINT_SUFFIXES) if target.is_dir() else []
    if cached:
        touch(target)
        return cached[0]
    search.looked.append(f"cache directory {target} (empty; set CLIPSERVE_CACHE_DIR to use another)")
    if offline():
        search.looked.append("downloads skipped: offline (CLIPSERVE_OFFLINE or HF_HUB_OFFLINE is set)")
        raise search.fail()
    if spec.hf_hub:
        path = _download_from_hub(spec, target, search)
        if path:
            return path
    if spec.url:
        path = _download_url(spec.url, target, search)
        if path:
            return path
    raise search.fail()


def _download_from_hub(spec: ModelSpec, target: Path, search: _Search) -> Path | None:
    from huggingface_hub import hf_hub_download

    for filename in HUB_FILENAMES:
        try:
            log.info("downloading %s from the Hugging Face Hub repo %s", filename, spec.hf_hub)
            return Path(hf_hub_download(spec.hf_hub, filename, local_dir=target))
        except Exception as exc:  # hub errors have many types (offline, 404, auth); record and go on
            search.looked.append(f"Hugging Face Hub {spec.hf_hub}/{filename}: {type(exc).__name__}: {exc}")
    return None


def _download_url(url: str, target: Path, search: _Search) -> Path | None:
    target.mkdir(parents=True, exist_ok=True)
    dest = target / Path(urllib.parse.urlparse(url).path).name
    try:
        with (
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
            tempfile.NamedTemporaryFile(dir=target, delete=False) as tmp,
        ):
            total = int(response.headers.get("Content-Length") or 0) or None
            digest = hashlib.sha256()
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                while chunk := response.read(1 << 20):
                    tmp.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        search.looked.append(f"URL {url}: {exc}")
        return None
    expected = _SHA256_IN_URL.search(url)
    if expected and digest.hexdigest() != expected.group(1):
        os.unlink(tmp.name)
        search.looked.append(f"URL {url}: checksum mismatch (got sha256 {digest.hexdigest()})")
        return None
    shutil.move(tmp.name, dest)
    return dest
