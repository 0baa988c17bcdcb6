"""Pick a backend and give it weights: checkpoint for torch, an ONNX export for onnx."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from clipserve.backends.base import Backend
from clipserve.errors import UnsupportedModel, WeightsUnavailable
from clipserve.weights import (
    checkpoint_fingerprint,
    explicit_weights,
    find_checkpoint,
    is_onnx_dir,
    onnx_cache,
)
from clipserve.zoo import ModelSpec

log = logging.getLogger(__name__)

BACKENDS = ("onnx", "torch")


def create_backend(
    spec: ModelSpec,
    backend: str,
    device: str,
    weights: str | os.PathLike[str] | None,
    precision: str,
    cache: Path,
) -> Backend:
    """Build ``backend`` for ``spec`` on ``device``, locating (and for onnx, exporting) weights."""
    if spec.unsupported_reason:
        raise UnsupportedModel(spec.unsupported_reason)
    explicit = explicit_weights(spec, weights) if weights is not None else None
    if backend == "torch":
        from clipserve.backends.torch import TorchBackend

        if explicit is not None and explicit.is_dir():
            raise UnsupportedModel(
                f"the torch backend needs a checkpoint file, and {explicit} is an ONNX export"
            )
        return TorchBackend(spec, explicit or find_checkpoint(spec, cache), device, precision)
    if backend == "onnx":
        from clipserve.backends.onnx import OnnxBackend

        return OnnxBackend(spec, onnx_model_dir(spec, explicit, cache), device, precision)
    raise UnsupportedModel(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def onnx_model_dir(spec: ModelSpec, explicit: Path | None, cache: Path) -> Path:
    """An exported ONNX directory for ``spec``: given, cached, or exported once into the cache."""
    if explicit is not None and explicit.is_dir():
        return explicit
    source = checkpoint_fingerprint(explicit) if explicit is not None else spec.tag
    target = onnx_cache(spec, cache, source, "fp32")
    if is_onnx_dir(target):
        return target
    checkpoint = explicit or find_checkpoint(spec, cache)
    try:
        from clipserve.backends.export import export_onnx
    except ImportError as exc:
        raise WeightsUnavailable(
            f"{spec.name} has a checkpoint ({checkpoint}) but no ONNX export in {target}, and exporting "
            f"needs torch ({exc}). Install `clipserve[torch]` once, or pass an exported ONNX directory."
        ) from exc
    log.info("exporting %s to ONNX once, into %s", spec.name, target)
    return export_onnx(spec, checkpoint, target)
