"""M-CLIP: a multilingual text encoder (XLM-R large or LaBSE, mean-pooled, projected) trained into
the space of a CLIP image tower, paired with that tower as clip-as-service paired them.

- Text: the released M-CLIP directory (``config.json``, weights, tokenizer files) given as
  ``weights=``, else the cache, else the hub. Texts are cut at the zoo's context length (77 tokens,
  as clip-as-service did; the original code does not cut, and the model was trained on texts of at
  most 32 tokens), and batches are padded only to their longest text (the encoder masks padding).
- Images: the paired zoo model's image tower (``image_weights=``, else its cache or hub), run
  exactly as for that model; its logit scale ranks.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clipserve.backends.factory import backend_weights, create_backend, torch_installed
from clipserve.backends.published import IMMICH, fetch_immich, immich_repo, is_immich_dir, published_mclip
from clipserve.cache import enforce_cap, touch
from clipserve.errors import WeightsUnavailable
from clipserve.families.base import Tower
from clipserve.families.towers import check_text, image_tower
from clipserve.inputs import Item
from clipserve.preprocess.text import HfTokenizer
from clipserve.settings import EngineSettings
from clipserve.weights import (
    TOKENIZER_DIR,
    Search,
    cache_dir,
    download_hub_files,
    find_tokenizer,
    offline,
    spec_of_export,
)
from clipserve.zoo import ModelSpec, get_spec

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class MClipModel:
    """An M-CLIP text encoder beside its CLIP image tower; see :class:`clipserve.families.base.Model`."""

    def __init__(self, spec: ModelSpec, settings: EngineSettings, spin: bool = True) -> None:
        self.spec = spec
        cache = cache_dir(settings.cache_dir)
        image_spec = get_spec(spec.image_model)
        image_weights, text_weights = settings.image_weights, settings.weights
        published = immich_directory(spec, settings, cache)
        if published is not None:  # immich's graphs of both towers, made into two exports
            directory, origin = published
            image_dir, text_dir = published_mclip(directory, spec, image_spec, cache, origin)
            image_weights, text_weights = str(image_dir), str(text_dir)
            image_spec = spec_of_export(image_spec, image_dir)
        self.image_backend = create_backend(
            image_spec,
            settings.backend,
            settings.device,
            image_weights,
            settings.precision,
            cache,
            spin,
            towers=("image",),
        )
        given = Path(text_weights).expanduser() if text_weights is not None else None
        source = given if given is not None else find_text_weights(spec, cache)
        tokenizer_dir = find_tokenizer(
            spec,
            cache,
            [
                Path(settings.tokenizer).expanduser() if settings.tokenizer else None,
                source,
                source / TOKENIZER_DIR,
            ],
        )
        self.text_encoder = text_encoder(spec, source, settings, cache, spin, tokenizer_dir)
        enforce_cap(cache, settings.cache_max_gb, Path(str(self.text_encoder.info()["text_weights"])))
        self.tokenizer = HfTokenizer(tokenizer_dir, spec.context_length, spec.tokenizer_clean)
        self.towers = {
            "text": mean_pooled_text_tower(self.tokenizer, self.text_encoder, settings.max_text_chars),
            "image": image_tower(image_spec, self.image_backend, settings),
        }

    def logit_scale(self, query: str, candidate: str) -> float:
        return self.image_backend.logit_scale

    def info(self) -> dict[str, object]:
        return {
            "family": self.spec.family,
            "tokenizer": self.spec.tokenizer,
            "image_model": self.spec.image_model,
            **self.image_backend.info(),
            **self.text_encoder.info(),
        }

    def close(self) -> None:
        pass


def immich_directory(spec: ModelSpec, settings: EngineSettings, cache: Path) -> tuple[Path, str] | None:
    """``(directory, origin)`` of immich's graphs of ``spec`` when they are the weights: given as
    ``weights`` (a directory in immich's layout), or chosen by ``source`` (``immich``; ``auto``
    with no weights given and no torch to export the checkpoints with)."""
    given = Path(settings.weights).expanduser() if settings.weights is not None else None
    if given is not None and is_immich_dir(given):
        return given, str(given)
    unnamed = settings.weights is None and settings.image_weights is None
    if settings.source == IMMICH or (settings.source == "auto" and unnamed and not torch_installed()):
        repo = immich_repo(spec)
        return fetch_immich(repo, cache), repo
    return None


def find_text_weights(spec: ModelSpec, cache: Path) -> Path:
    """The cached M-CLIP directory of ``spec``, downloaded from its hub repo when allowed."""
    target = cache / "checkpoints" / spec.arch / spec.tag
    if (target / "config.json").is_file() and any((target / name).is_file() for name in WEIGHT_FILES):
        touch(target)
        return target
    search = Search(
        spec,
        [f"cache directory {target} (empty)"],
        what="text encoder weights",
        remedy=(
            f"Pass weights='/path/to/{spec.tag}' (the M-CLIP directory as on the Hugging Face Hub: "
            "config.json, pytorch_model.bin or model.safetensors, tokenizer files), or copy it into "
            "the cache directory named above."
        ),
    )
    if offline():
        search.looked.append("downloads skipped: offline (CLIPSERVE_OFFLINE or HF_HUB_OFFLINE is set)")
        raise search.fail()
    for weights in WEIGHT_FILES:
        if download_hub_files(spec.hf_hub, ["config.json", weights], (), target, search):
            return target
    raise search.fail()


def text_encoder(
    spec: ModelSpec, source: Path, settings: EngineSettings, cache: Path, spin: bool, tokenizer_dir: Path
):
    """The text encoder on the chosen backend: torch from the checkpoint, or onnx from an export
    (given, cached, or made once from the checkpoint; int8 derived from fp32)."""
    path = backend_weights(
        spec,
        settings.backend,
        settings.device,
        settings.precision,
        source,
        cache,
        exporter=functools.partial(export_text_fp32, tokenizer_dir=tokenizer_dir),
    )
    if settings.backend == "torch":
        from clipserve.backends.hf_text import TorchTextEncoder, load_mean_pooled

        model = load_mean_pooled(path, spec.text_base, spec.dim)
        return TorchTextEncoder(model, settings.device, settings.precision, path)
    from clipserve.backends.onnx import OnnxTextEncoder

    return OnnxTextEncoder(path, settings.device, settings.precision, spin)


def export_text_fp32(spec: ModelSpec, checkpoint: Path, target: Path, tokenizer_dir: Path) -> Path:
    """The ONNX exporter of the text encoder (a copy of the tokenizer beside it); explains when
    torch is missing."""
    try:
        from clipserve.backends.hf_text import export_mean_pooled, load_mean_pooled
    except ImportError as exc:
        raise WeightsUnavailable(
            f"{spec.name} needs an ONNX export of its text encoder, and exporting needs torch "
            f"({exc}). Install `clipserve[torch]` once, or pass an exported directory."
        ) from exc
    model = load_mean_pooled(checkpoint, spec.text_base, spec.dim)
    meta = {"model": spec.name, "arch": spec.arch, "dim": spec.dim, "source": str(checkpoint)}
    meta["spec"] = dataclasses.asdict(spec)
    export_mean_pooled(model, target, meta, tokenizer_dir)
    return target


def mean_pooled_text_tower(tokenizer: HfTokenizer, encoder, max_chars: int) -> Tower:
    """Token ids per text; a batch is padded to its longest text, with the matching attention mask."""

    def prepare(item: Item) -> list[int]:
        return tokenizer.token_ids([check_text(item, max_chars)])[0]

    def run(batch: Sequence[list[int]]) -> np.ndarray:
        width = max(len(ids) for ids in batch)
        ids = tokenizer.pad(list(batch), width)
        mask = (np.arange(width)[None, :] < np.asarray([len(seq) for seq in batch])[:, None]).astype(np.int64)
        return encoder.encode(ids, mask)

    return Tower("text", prepare, run, cost=len, heavy=False)
