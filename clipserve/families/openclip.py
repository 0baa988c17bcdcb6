"""The open_clip family: an image tower, and a text tower with CLIP's BPE or a Hugging Face tokenizer.

One loader for every open_clip model of the zoo: CLIP, SigLIP and SigLIP2, CLIPA, MetaCLIP 2
worldwide, and the models with a Hugging Face text encoder (XLM-R, RoBERTa, NLLB). What differs
between them is data in the spec: the tokenizer and its cleaning, and how a batch of texts may be
cut short exactly (``text_trim``).
"""

from __future__ import annotations

from pathlib import Path

from clipserve.backends.base import Backend
from clipserve.backends.factory import create_backend
from clipserve.cache import enforce_cap
from clipserve.errors import WeightsUnavailable
from clipserve.families.openclip_config import spec_from_hub_dir
from clipserve.families.towers import Tokenizer, image_tower, text_tower
from clipserve.preprocess.text import BUILTIN_TOKENIZER, ClipTokenizer, HfTokenizer
from clipserve.settings import EngineSettings
from clipserve.weights import (
    HUB_FILENAMES,
    TOKENIZER_DIR,
    cache_dir,
    explicit_weights,
    find_tokenizer,
    is_hub_dir,
    is_onnx_dir,
    spec_of_export,
)
from clipserve.zoo import ModelSpec


class OpenClipModel:
    """An open_clip model on one backend; see :class:`clipserve.families.base.Model`."""

    def __init__(self, spec: ModelSpec, settings: EngineSettings, spin: bool = True) -> None:
        cache = cache_dir(settings.cache_dir)
        weights = explicit_weights(spec, settings.weights) if settings.weights is not None else None
        if weights is not None and is_hub_dir(weights):
            spec = spec_from_hub_dir(spec, weights)
        elif weights is not None and is_onnx_dir(weights):
            spec = spec_of_export(spec, weights)
        self.spec = spec
        try:
            tokenizer_dir = locate_tokenizer(spec, settings, weights, cache)
            missing = None
        except WeightsUnavailable as exc:  # a publisher's export may carry the tokenizer: see below
            tokenizer_dir, missing = None, exc
        self.backend: Backend = create_backend(
            spec,
            settings.backend,
            settings.device,
            weights,
            settings.precision,
            cache,
            spin,
            tokenizer_dir,
            source=settings.source,
        )
        ran = Path(str(self.backend.info()["weights"]))
        if weights is None and is_onnx_dir(ran):  # a publisher's export keeps its own preprocessing
            self.spec = spec = spec_of_export(spec, ran)
            if missing is not None and (ran / TOKENIZER_DIR / "tokenizer.json").is_file():
                tokenizer_dir, missing = ran / TOKENIZER_DIR, None
        if missing is not None:
            raise missing
        enforce_cap(cache, settings.cache_max_gb, Path(str(self.backend.info()["weights"])))
        self.tokenizer = make_tokenizer(spec, tokenizer_dir)
        self.towers = {
            "text": text_tower(self.tokenizer, self.backend, settings.max_text_chars),
            "image": image_tower(spec, self.backend, settings),
        }

    def logit_scale(self, query: str, candidate: str) -> float:
        return self.backend.logit_scale

    def info(self) -> dict[str, object]:
        return {"family": self.spec.family, "tokenizer": self.spec.tokenizer, **self.backend.info()}

    def close(self) -> None:
        pass


def locate_tokenizer(
    spec: ModelSpec, settings: EngineSettings, weights: Path | None, cache: Path
) -> Path | None:
    """The directory of ``spec``'s Hugging Face tokenizer (None for CLIP's built-in BPE): the
    ``tokenizer`` setting, the weights directory (hub layout, or an export's copy) or the folder of
    a hub-layout weights file, the cache, the hub."""
    if spec.tokenizer == BUILTIN_TOKENIZER:
        return None
    candidates = [Path(settings.tokenizer).expanduser() if settings.tokenizer else None]
    if weights is not None and weights.is_dir():
        candidates += [weights, weights / TOKENIZER_DIR]
    elif weights is not None and weights.name in HUB_FILENAMES:
        candidates.append(weights.parent)
    return find_tokenizer(spec, cache, candidates)


def make_tokenizer(spec: ModelSpec, tokenizer_dir: Path | None) -> Tokenizer:
    """CLIP's BPE, or the model's Hugging Face tokenizer with its cleaning and context length."""
    if tokenizer_dir is None:
        return ClipTokenizer(spec.context_length)
    return HfTokenizer(tokenizer_dir, spec.context_length, spec.tokenizer_clean, spec.strip_sep_token)
