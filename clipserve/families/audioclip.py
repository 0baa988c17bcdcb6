"""AudioCLIP (Guzhov et al., 2021): audio, images and text in one 1024-d space.

CLIP RN50's image and text towers and an ESResNeXt-FBSP audio tower, all in one released checkpoint
(``AudioCLIP::full``: every tower fine-tuned; ``AudioCLIP::partial``: only the audio tower trained,
the image and text towers are OpenAI's CLIP RN50, so its audio vectors sit in CLIP RN50's space).
Three temperatures rank pairs: image-text (CLIP's), audio-image and audio-text, each ``exp`` of the
learned value clamped to [1, 100] as the original does.

Audio is mono at 44.1 kHz in 5-second windows (:mod:`clipserve.preprocess.audio`); the model takes
the samples in the 16-bit range (× 32768), as the original's training and evaluation fed them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clipserve.backends.factory import backend_weights
from clipserve.cache import enforce_cap
from clipserve.errors import UnsupportedModel, WeightsUnavailable
from clipserve.families.base import Tower
from clipserve.families.towers import image_tower, text_tower
from clipserve.inputs import Item
from clipserve.preprocess.audio import WINDOW, AudioLimits, decode_audio, windows
from clipserve.preprocess.budget import process_budget
from clipserve.preprocess.text import ClipTokenizer
from clipserve.settings import EngineSettings
from clipserve.vectors import normalise
from clipserve.weights import cache_dir, explicit_weights, is_onnx_dir, spec_of_export
from clipserve.zoo import ModelSpec

PAIR_SCALES = {
    frozenset({"image", "text"}): "logit_scale",
    frozenset({"audio", "image"}): "logit_scale_ai",
    frozenset({"audio", "text"}): "logit_scale_at",
}
CPU_AUDIO_BATCH = 4
"""Clips per model call on a CPU: each 5-second window is a 3 × 341 × 392 "image" for ResNeXt-50."""
INT16_RANGE = np.float32(32768)
WINDOW_WEIGHT = math.ceil(4 * WINDOW / (3 * 224 * 224))
"""A prepared 5-second window (220,500 float32 samples, 882 KB) holds as much memory as 6 prepared
224 px images (uint8 crops, 150 KB): it counts as 6 items in a server's in-flight limit, so that
limit bounds memory whatever the modality."""


class AudioClipModel:
    """AudioCLIP on one backend; see :class:`clipserve.families.base.Model`."""

    def __init__(self, spec: ModelSpec, settings: EngineSettings, spin: bool = True) -> None:
        try:
            import soundfile  # noqa: F401
            import soxr  # noqa: F401
        except ImportError as exc:
            raise UnsupportedModel(
                f"{spec.name} decodes audio with soundfile and soxr ({exc}): pip install 'clipserve[audio]'"
            ) from exc
        cache = cache_dir(settings.cache_dir)
        weights = explicit_weights(spec, settings.weights) if settings.weights is not None else None
        if weights is not None and is_onnx_dir(weights):
            spec = spec_of_export(spec, weights)
        self.spec = spec
        path = backend_weights(
            spec,
            settings.backend,
            settings.device,
            settings.precision,
            weights,
            cache,
            exporter=export_audioclip_fp32,
        )
        if settings.backend == "torch":
            from clipserve.backends.audioclip import AudioClipTorchBackend

            self.backend = AudioClipTorchBackend(spec, path, settings.device, settings.precision)
        else:
            from clipserve.backends.onnx import OnnxBackend

            self.backend = OnnxBackend(
                spec, path, settings.device, settings.precision, spin, towers=("image", "text", "audio")
            )
        enforce_cap(cache, settings.cache_max_gb, Path(str(self.backend.info()["weights"])))
        self.towers = {
            "text": text_tower(ClipTokenizer(spec.context_length), self.backend, settings.max_text_chars),
            "image": image_tower(spec, self.backend, settings),
            "audio": audio_tower(self.backend, settings),
        }

    def logit_scale(self, query: str, candidate: str) -> float:
        name = PAIR_SCALES.get(frozenset({query, candidate}), "logit_scale")
        return self.backend.logit_scales[name]

    def info(self) -> dict[str, object]:
        return {"family": self.spec.family, "tokenizer": self.spec.tokenizer, **self.backend.info()}

    def close(self) -> None:
        pass


def export_audioclip_fp32(spec: ModelSpec, checkpoint: Path, target: Path) -> Path:
    """The ONNX exporter of AudioCLIP (image, text and audio graphs); explains when torch is missing."""
    try:
        from clipserve.backends.audioclip import export_audioclip
    except ImportError as exc:
        raise WeightsUnavailable(
            f"{spec.name} needs an ONNX export, and exporting needs torch ({exc}). Install "
            "`clipserve[torch]` once, or pass an exported directory."
        ) from exc
    return export_audioclip(spec, checkpoint, target)


def audio_tower(backend, settings: EngineSettings) -> Tower:
    """5-second windows per clip; a clip's vector is the mean of its windows' (each normalised)."""
    limits = AudioLimits(settings.max_audio_s, settings.max_decode_s, process_budget(settings.max_decode_mb))

    def prepare(item: Item) -> np.ndarray:
        if item.kind == "waveform":
            samples, rate = item.value
            return windows(decode_audio(samples, item.index, limits, rate))
        return windows(decode_audio(item.value, item.index, limits))

    def run(batch: Sequence[np.ndarray]) -> np.ndarray:
        clips = np.concatenate(batch) * INT16_RANGE
        embedded = normalise(backend.encode_audio(clips))
        bounds = np.cumsum([0, *(len(clip) for clip in batch)])
        return np.stack([embedded[a:b].mean(axis=0) for a, b in itertools.pairwise(bounds)])

    max_batch = CPU_AUDIO_BATCH if settings.device == "cpu" else None
    weight = WINDOW_WEIGHT * math.ceil(settings.max_audio_s / 5)
    return Tower("audio", prepare, run, max_batch=max_batch, weight=weight)
