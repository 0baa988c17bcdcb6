"""AudioCLIP on torch: its checkpoint loaded strictly into CLIP RN50 (open_clip) and the audio head,
run on CPU or CUDA, and exported to ONNX (image, text, audio). Needs the ``torch`` extra.

A released checkpoint is a plain state dict: CLIP RN50's keys (QuickGELU), ``audio.*`` for the audio
head, and two extra temperatures, ``logit_scale_ai`` (audio-image) and ``logit_scale_at``
(audio-text). The original loads it with ``strict=False``, which hides a wrong or partial file;
here every key must fit, and the error names those that do not.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import open_clip
import torch

from clipserve.backends.audio_head import WINDOW_SAMPLES, AudioHead
from clipserve.backends.export import export_model
from clipserve.backends.torch import TorchBackend, resolve_device
from clipserve.errors import WeightsUnavailable, listed
from clipserve.zoo import ModelSpec

log = logging.getLogger(__name__)

CLIP_ARCH = "RN50"
SCALES = ("logit_scale", "logit_scale_ai", "logit_scale_at")


@dataclasses.dataclass
class AudioClipWeights:
    clip: torch.nn.Module
    audio: AudioHead
    logit_scales: dict[str, float]
    """exp of each temperature, clamped to [1, 100] as the original does."""


def load_audioclip(path: Path) -> AudioClipWeights:
    """The three towers of an AudioCLIP checkpoint, loaded strictly."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailable(f"{path} is not a readable AudioCLIP checkpoint: {exc}") from exc
    if not isinstance(state, dict):
        raise WeightsUnavailable(f"{path} holds a {type(state).__name__}, not a state dict")
    state = {key.removeprefix("module."): value for key, value in state.items()}
    clip = open_clip.create_model(CLIP_ARCH, force_quick_gelu=True).eval()
    audio = AudioHead().eval()
    clip_keys = {
        key: value for key, value in state.items() if not key.startswith("audio.") and key not in SCALES[1:]
    }
    audio_keys = {
        key.removeprefix("audio."): value for key, value in state.items() if key.startswith("audio.")
    }
    missing, unexpected = [], []
    for module, part, prefix in ((clip, clip_keys, ""), (audio, audio_keys, "audio.")):
        result = module.load_state_dict(part, strict=False)
        missing += [prefix + key for key in result.missing_keys]
        unexpected += [prefix + key for key in result.unexpected_keys]
    missing += [name for name in SCALES[1:] if name not in state]
    if missing or unexpected:
        problems = f"missing {listed(missing)}; unexpected {listed(unexpected)}"
        raise WeightsUnavailable(f"{path} is not a complete AudioCLIP checkpoint: {problems}")
    audio.freeze_transform()
    scales = {name: float(torch.clamp(state[name].float().exp(), 1.0, 100.0)) for name in SCALES}
    return AudioClipWeights(clip, audio, scales)


class AudioClipTorchBackend(TorchBackend):
    """The image and text towers of :class:`TorchBackend`, and the audio head."""

    def __init__(
        self, spec: ModelSpec, checkpoint: Path, device: str = "cpu", precision: str = "fp32"
    ) -> None:
        weights = load_audioclip(checkpoint)
        super().__init__(spec, checkpoint, device, precision, model=weights.clip)
        # bf16 is for images and text: the audio head stays fp32 (its bf16 accuracy is not measured).
        self.audio_dtype = torch.float32 if precision == "bf16" else self.dtype
        self.audio = weights.audio.to(resolve_device(device), self.audio_dtype)
        self.logit_scales = weights.logit_scales

    @torch.inference_mode()
    def encode_audio(self, samples: np.ndarray) -> np.ndarray:
        """``[n, 220500]`` samples in the 16-bit range → ``[n, 1024]`` (not normalised)."""
        return self.audio(torch.from_numpy(samples).to(self.device, self.audio_dtype)).float().cpu().numpy()


def export_audioclip(spec: ModelSpec, checkpoint: Path, out_dir: Path) -> Path:
    """Write ``image.onnx``, ``text.onnx`` and ``audio.onnx`` (5-second clips, dynamic batch) of
    ``checkpoint`` into ``out_dir``, with the temperatures in ``clipserve.json``."""
    weights = load_audioclip(checkpoint)
    batch = torch.export.Dim("batch", min=1, max=4096)
    audio = (weights.audio, torch.zeros(2, WINDOW_SAMPLES), "audio", {0: batch})
    return export_model(
        spec,
        weights.clip,
        out_dir,
        checkpoint,
        extra_towers={"audio.onnx": audio},
        extra_meta={"logit_scales": weights.logit_scales},
    )
