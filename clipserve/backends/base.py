"""The backend protocol: what :class:`clipserve.encoder.Encoder` needs from a model runtime."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from clipserve.errors import UnsupportedModel
from clipserve.resources import BF16_FLAGS, cpu_flags
from clipserve.zoo import ModelSpec

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
"""Named precisions: fp32 is exact; bf16, fp16 and int8 trade accuracy for speed and are never a default."""

PRECISION_DEVICES: dict[str, dict[str, tuple[str, ...]]] = {
    "onnx": {"fp32": ("cpu", "cuda", "tensorrt"), "fp16": ("cuda", "tensorrt"), "int8": ("cpu",)},
    "torch": {"fp32": ("cpu", "cuda"), "bf16": ("cpu",), "fp16": ("cuda",)},
}
"""backend → precision → the device kinds it runs on."""
PRECISION_HINTS = {
    ("onnx", "bf16"): "bf16 runs on the torch backend (ONNX Runtime's CPU provider has no bf16 kernels), "
    "on a CPU with AVX512_BF16 or AMX",
    ("torch", "int8"): "int8 runs on the onnx backend",
}


class Backend(Protocol):
    """Runs preprocessed arrays through one model's towers; knows nothing of inputs or batching.

    Both backends also take the image path's torch tensors (``tensor_preprocess``):
    ``tensor_device`` says where the pixels should be, and ``encode_image_tensor`` embeds them there.
    """

    spec: ModelSpec
    logit_scale: float
    """exp of the model's learned temperature, used by ``rank``."""
    text_dynamic_length: bool
    """True when ``encode_text`` accepts token arrays shorter than the context length."""

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        """float32 ``[n, 3, H, W]`` normalised pixels → float32 ``[n, dim]`` (not normalised)."""
        ...

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        """int64 ``[n, L]`` token ids → float32 ``[n, dim]`` (not normalised)."""
        ...

    def info(self) -> dict[str, object]:
        """What really runs: backend, device, providers, precision, weights location."""
        ...


def check_backend_precision(precision: str, backend: str) -> None:
    """Raise :class:`UnsupportedModel` unless ``backend`` offers ``precision`` at all."""
    if precision not in PRECISIONS:
        raise UnsupportedModel(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision not in PRECISION_DEVICES[backend]:
        offered = ", ".join(PRECISION_DEVICES[backend])
        hint = PRECISION_HINTS.get((backend, precision))
        if precision == "bf16" and not cpu_flags() & set(BF16_FLAGS):
            hint = f"{hint}; this CPU has neither: use int8 for speed, or fp32"
        raise UnsupportedModel(
            f"the {backend} backend has no {precision!r} precision (it offers: {offered})"
            + (f"; {hint}" if hint else "")
        )


def check_engine(precision: str, backend: str, device: str) -> None:
    """Refuse, before any weights are found or converted, a precision ``backend`` lacks or does not
    run on ``device`` (``cpu``, ``cuda:1``…); a device the backend does not know is left to it to word."""
    check_backend_precision(precision, backend)
    kind = device.split(":")[0]
    if any(kind in kinds for kinds in PRECISION_DEVICES[backend].values()):
        check_precision(precision, backend, kind)


def check_precision(precision: str, backend: str, device: str) -> None:
    """Raise :class:`UnsupportedModel` unless ``precision`` runs on ``backend`` with ``device`` (a kind)."""
    check_backend_precision(precision, backend)
    runs_on = PRECISION_DEVICES[backend][precision]
    if device not in runs_on:
        raise UnsupportedModel(
            f"precision {precision!r} is not available for the {backend} backend on {device!r} "
            f"(it runs on: {', '.join(runs_on)})"
        )
