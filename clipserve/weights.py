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
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from clipserve.cache import touch
from clipserve.errors import WeightsUnavailable
from clipserve.zoo import ModelSpec, spec_from_row

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
HUB_FILENAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
CHECKPOINT_NAMES = (*HUB_FILENAMES, "model.safetensors", "pytorch_model.bin")
"""Weight files of a model directory in the hub layout, preferred first."""
ONNX_MARKER = "clipserve.json"
OPTIONAL_TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json")
"""Beside ``tokenizer.json``, the files of a Hugging Face tokenizer that name its special tokens."""
OPEN_CLIP_CONFIG = "open_clip_config.json"
TOKENIZER_DIR = "tokenizer"
"""Where an export keeps a copy of its Hugging Face tokenizer, so the directory runs alone."""
EXPORT_FORMAT = 2
"""Bumped whenever exported graphs change (2: the text tower's last block runs at the end token only)."""
DOWNLOAD_TIMEOUT_S = 60
HUB_PROBE_TIMEOUT_S = 5.0
"""How long the one request that tells whether the Hugging Face hub answers may take."""
HUB_PROBE_MEMORY_S = 60.0
"""How long its answer holds: later loads in a running server try again after that."""
_hub_probe: tuple[float, str | None] = (-HUB_PROBE_MEMORY_S, None)
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


@contextmanager
def staged_dir(out_dir: Path) -> Iterator[Path]:
    """A fresh directory beside ``out_dir`` to write into; renamed into place when the block ends
    without error, so a crash or a concurrent writer never leaves a half-written model where the
    runtime looks."""
    staging = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)


def write_export_meta(directory: Path, meta: dict, tokenizer_dir: Path | None = None) -> None:
    """Write an export's ``clipserve.json`` and, for a Hugging Face tokenizer, a copy of its files
    (so the export runs alone, without torch or the hub)."""
    (directory / ONNX_MARKER).write_text(json.dumps(meta, indent=2) + "\n")
    if tokenizer_dir is not None:
        (directory / TOKENIZER_DIR).mkdir(exist_ok=True)
        for name in ("tokenizer.json", *OPTIONAL_TOKENIZER_FILES):
            if (tokenizer_dir / name).is_file():
                shutil.copy(tokenizer_dir / name, directory / TOKENIZER_DIR / name)


def spec_of_export(spec: ModelSpec, export_dir: Path) -> ModelSpec:
    """The spec an export was made from (it keeps one: a model directory may have refined the zoo
    entry's), once checked to be of the model ``spec`` names: the same architecture and tag (the
    weights of ``ViT-B-32::laion2b_s34b_b79k`` are not served as ``ViT-B-32::openai``)."""
    meta = read_export_meta(export_dir)
    if "spec" not in meta:
        return spec
    kept = spec_from_row(meta["spec"])
    if (kept.arch, kept.tag) != (spec.arch, spec.tag):
        raise WeightsUnavailable(f"{export_dir} holds an export of {kept.name}, not of {spec.name}")
    return kept


def read_export_meta(path: Path) -> dict:
    """The ``clipserve.json`` of an ONNX export directory."""
    return json.loads((path / ONNX_MARKER).read_text())


@dataclass
class Search:
    spec: ModelSpec
    looked: list[str]
    what: str = "weights"
    remedy: str = ""

    def fail(self) -> WeightsUnavailable:
        places = "\n".join(f"  - {place}" for place in self.looked)
        remedy = self.remedy or (
            f"Pass a local checkpoint (.safetensors, .bin, .pt), a directory in the Hugging Face Hub "
            f"layout or an exported ONNX directory: "
            f"Encoder({self.spec.name!r}, weights='/path/to/open_clip_model.safetensors') or "
            f"`clipserve encode --model {self.spec.name} --weights PATH ...`; "
            f"or copy the file into the cache directory named above."
        )
        return WeightsUnavailable(f"no {self.what} for {self.spec.name}. Looked in:\n{places}\n{remedy}")


def is_hub_dir(path: Path) -> bool:
    """True for a model directory in open_clip's Hugging Face Hub layout (config, weights, tokenizer)."""
    return path.is_dir() and (path / OPEN_CLIP_CONFIG).is_file()


def explicit_weights(spec: ModelSpec, weights: str | os.PathLike[str]) -> Path:
    """Validate a user-given weights path: a checkpoint file, a directory in the hub layout
    (``open_clip_config.json``, weights, tokenizer files) or an exported ONNX directory.

    A hub-layout directory without its ``open_clip_config.json`` stands for its weights file: the
    zoo entry of ``spec`` says what the config would (its tokenizer files are still found there)."""
    path = Path(weights).expanduser()
    if is_onnx_dir(path) or is_hub_dir(path):
        return path
    if path.is_dir() and (inside := next((path / n for n in HUB_FILENAMES if (path / n).is_file()), None)):
        return inside
    if path.is_file() and path.suffix in CHECKPOINT_SUFFIXES:
        return path
    why = (
        "does not exist"
        if not path.exists()
        else "is neither a checkpoint file, a hub-layout directory nor an ONNX export directory"
    )
    raise Search(
        spec, [f"explicit weights {path}: {why} (checkpoints end in {', '.join(CHECKPOINT_SUFFIXES)})"]
    ).fail()


def find_checkpoint(spec: ModelSpec, root: Path) -> Path:
    """The cached checkpoint of ``spec``, downloading it when allowed.

    Raises:
        WeightsUnavailable: nothing cached and the download is off or failed.
    """
    search = Search(spec, [])
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
        path = download_url(spec.url, target, search.looked, sha256=spec.sha256, size=spec.size)
        if path:
            return path
    raise search.fail()


def find_tokenizer(spec: ModelSpec, root: Path, candidates: list[Path | None]) -> Path:
    """A directory with ``spec.tokenizer``'s files: the first of ``candidates`` that holds a
    ``tokenizer.json`` (a ``tokenizer=`` directory, a hub-layout weights directory, the folder of
    a weights file, an export's copy), else the cache, else a download from the tokenizer's hub repo.

    Raises:
        WeightsUnavailable: none found; the message names the tokenizer and every place looked.
    """
    search = Search(
        spec,
        [],
        what=f"tokenizer files ({spec.tokenizer})",
        remedy=(
            "Pass tokenizer='/path/to/dir' (a directory with tokenizer.json and tokenizer_config.json, as "
            "on the Hugging Face Hub), or weights='/path/to/dir' in the hub layout (weights, "
            "open_clip_config.json and the tokenizer files together)."
        ),
    )
    for candidate in candidates:
        if candidate is None:
            continue
        if (candidate / "tokenizer.json").is_file():
            return candidate
        search.looked.append(f"{candidate} (no tokenizer.json)")
    target = root / "tokenizers" / spec.tokenizer.replace("/", "--")
    if (target / "tokenizer.json").is_file():
        touch(target)
        return target
    search.looked.append(f"cache directory {target} (empty)")
    if offline():
        search.looked.append("downloads skipped: offline (CLIPSERVE_OFFLINE or HF_HUB_OFFLINE is set)")
        raise search.fail()
    if download_hub_files(spec.tokenizer, ["tokenizer.json"], OPTIONAL_TOKENIZER_FILES, target, search):
        return target
    raise search.fail()


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub does not answer, or None when it does: one quick request, remembered
    for a minute. Without it an unreachable hub costs each download the hub library's retries (about
    50 s) before any error."""
    global _hub_probe
    import httpx
    from huggingface_hub import constants

    if constants.is_offline_mode():  # the hub client refuses at once by itself: nothing to probe
        return None
    checked_at, reason = _hub_probe
    if time.monotonic() - checked_at < HUB_PROBE_MEMORY_S:
        return reason
    endpoint = constants.ENDPOINT
    try:  # any answer, even an error status, is an answer; proxies from the environment apply
        httpx.head(endpoint, timeout=HUB_PROBE_TIMEOUT_S)
        reason = None
    except httpx.HTTPError as exc:
        waited = f"waited {HUB_PROBE_TIMEOUT_S:g} s at most"
        reason = f"{endpoint} did not answer ({type(exc).__name__}: {exc}; {waited})"
    _hub_probe = (time.monotonic(), reason)
    return reason


def hub_unreachable_note(reason: str) -> str:
    """What the places-looked list says of an unreachable hub."""
    return (
        f"Hugging Face Hub: unreachable, {reason}; set CLIPSERVE_OFFLINE=1 to use only local files and the "
        "cache, or check the network (HTTPS_PROXY) and HF_ENDPOINT"
    )


def remove_if_empty(directory: Path) -> None:
    """Remove ``directory`` (and the hub library's ``.cache`` in it) when a failed download left
    nothing else there, so that the cache does not list an empty entry."""
    if directory.is_dir() and all(p.name == ".cache" for p in directory.iterdir()):
        shutil.rmtree(directory, ignore_errors=True)


def download_hub_files(
    repo: str, required: list[str], optional: tuple[str, ...], target: Path, search: Search
) -> bool:
    """Download ``required`` (all) and ``optional`` (if present) files of a hub repo into ``target``;
    on failure ``target`` is left as it was found."""
    from huggingface_hub import hf_hub_download

    if reason := hub_unreachable():
        search.looked.append(hub_unreachable_note(reason))
        return False
    for filename in [*required, *optional]:
        try:
            log.info("downloading %s from the Hugging Face Hub repo %s", filename, repo)
            hf_hub_download(repo, filename, local_dir=target)
        except Exception as exc:  # hub errors have many types (offline, 404, auth); record and go on
            if filename in required:
                search.looked.append(f"Hugging Face Hub {repo}/{filename}: {type(exc).__name__}: {exc}")
                remove_if_empty(target)
                return False
    return True


def _download_from_hub(spec: ModelSpec, target: Path, search: Search) -> Path | None:
    from huggingface_hub import hf_hub_download

    if reason := hub_unreachable():
        search.looked.append(hub_unreachable_note(reason))
        return None
    for filename in HUB_FILENAMES:
        try:
            log.info("downloading %s from the Hugging Face Hub repo %s", filename, spec.hf_hub)
            return Path(hf_hub_download(spec.hf_hub, filename, local_dir=target))
        except Exception as exc:  # hub errors have many types (offline, 404, auth); record and go on
            search.looked.append(f"Hugging Face Hub {spec.hf_hub}/{filename}: {type(exc).__name__}: {exc}")
    remove_if_empty(target)
    return None


def download_url(
    url: str, target: Path, looked: list[str], *, sha256: str = "", md5: str = "", size: int = 0
) -> Path | None:
    """Download ``url`` into ``target``, checked against ``sha256``, ``md5`` and ``size`` when given
    (else against a checksum the URL's path carries, as OpenAI's do). The file is written beside
    and renamed into place once checked; a failure is recorded in ``looked`` and leaves nothing."""
    target.mkdir(parents=True, exist_ok=True)
    dest = target / Path(urllib.parse.urlparse(url).path).name
    tmp = tempfile.NamedTemporaryFile(dir=target, delete=False, suffix=".partial")  # noqa: SIM115
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, tmp:
            total = int(response.headers.get("Content-Length") or 0) or None
            digest, md5_digest = hashlib.sha256(), hashlib.md5()
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                while chunk := response.read(1 << 20):
                    tmp.write(chunk)
                    digest.update(chunk)
                    md5_digest.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        tmp.close()
        os.unlink(tmp.name)
        remove_if_empty(target)
        looked.append(f"URL {url}: {exc}")
        return None
    in_url = _SHA256_IN_URL.search(url)
    expected = sha256 or (in_url.group(1) if in_url else "")
    got = os.path.getsize(tmp.name)
    problem = ""
    if size and got != size:
        problem = f"{got} bytes, expected {size}"
    elif expected and digest.hexdigest() != expected:
        problem = f"checksum mismatch (got sha256 {digest.hexdigest()})"
    elif md5 and md5_digest.hexdigest() != md5:
        problem = f"checksum mismatch (got md5 {md5_digest.hexdigest()}, published {md5})"
    if problem:
        os.unlink(tmp.name)
        remove_if_empty(target)
        looked.append(f"URL {url}: {problem}")
        return None
    shutil.move(tmp.name, dest)
    return dest
