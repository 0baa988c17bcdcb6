"""Hugging Face transformers CLIP-family models on torch, run as transformers' own modules, and
their export to ONNX (needs the ``torch`` extra).

The towers call the model's own ``get_image_features`` and ``get_text_features`` (the split
``*WithProjection`` classes: their ``image_embeds`` and ``text_embeds``), so the vectors are
transformers' to the last operation. Weights load with ``from_pretrained`` from the local directory
only (safetensors, or ``pytorch_model.bin`` read with ``weights_only``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import transformers
from torch import nn

from clipserve.backends.export import MAX_BATCH, OPSET, export_graph, exporting
from clipserve.backends.torch import precision_dtype, resolve_device
from clipserve.errors import UnsupportedModel
from clipserve.weights import EXPORT_FORMAT, staged_dir, write_export_meta
from clipserve.zoo import ModelSpec

log = logging.getLogger(__name__)


@contextmanager
def _env(**variables: str) -> Iterator[None]:
    """The process environment with ``variables`` set, for the block."""
    before = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


DEFAULT_LOGIT_SCALE = 100.0
"""The temperature of a split model (one tower, no learned scale): CLIP's trained value."""


def load_model(spec: ModelSpec, directory: Path) -> nn.Module:
    """The transformers model of ``spec.arch`` from ``directory`` (local files only), in eval mode."""
    try:
        return getattr(transformers, spec.arch).from_pretrained(directory, local_files_only=True).eval()
    except (OSError, ValueError, RuntimeError) as exc:
        raise UnsupportedModel(f"cannot load {directory} as a transformers {spec.arch}: {exc}") from exc


def _embeddings(output, name: str) -> torch.Tensor:
    """The vectors of a model output: a tensor (older transformers), ``*_embeds`` (the split
    classes) or ``pooler_output`` (``get_*_features`` in transformers 5)."""
    if isinstance(output, torch.Tensor):
        return output
    embeds = getattr(output, name, None)
    return embeds if embeds is not None else output.pooler_output


class ImageFeatures(nn.Module):
    """``pixel_values → image vectors`` (unnormalised): the graph that is exported."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if hasattr(self.model, "get_image_features"):
            return _embeddings(self.model.get_image_features(pixel_values=pixel_values), "image_embeds")
        return self.model(pixel_values=pixel_values).image_embeds


class PatchFeatures(nn.Module):
    """SigLIP 2 (NaFlex): ``(patches, patch mask, grid shapes) → image vectors``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor, spatial_shapes: torch.Tensor
    ) -> torch.Tensor:
        output = self.model.get_image_features(
            pixel_values=pixel_values,
            pixel_attention_mask=pixel_attention_mask,
            spatial_shapes=spatial_shapes,
        )
        return _embeddings(output, "image_embeds")


class TextFeatures(nn.Module):
    """``(input_ids, attention_mask) → text vectors`` (unnormalised)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if hasattr(self.model, "get_text_features"):
            output = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
            return _embeddings(output, "text_embeds")
        return self.model(input_ids=input_ids, attention_mask=attention_mask).text_embeds


def logit_scale(model: nn.Module) -> float:
    scale = getattr(model, "logit_scale", None)
    return float(scale.exp().item()) if scale is not None else DEFAULT_LOGIT_SCALE


class HfTorchBackend:
    """A transformers model on torch: ``encode_image``/``encode_patches``/``encode_text``."""

    def __init__(
        self, spec: ModelSpec, directory: Path, device: str = "cpu", precision: str = "fp32"
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = precision_dtype(precision, self.device)
        self.spec, self.precision, self.directory = spec, precision, directory
        model = load_model(spec, directory)
        self.logit_scale = logit_scale(model)
        self.model = model.to(self.device, self.dtype)
        self.image, self.patches, self.text = (
            ImageFeatures(self.model),
            PatchFeatures(self.model),
            TextFeatures(self.model),
        )
        log.info(
            "torch backend: transformers %s on %s (%s) from %s", spec.arch, self.device, precision, directory
        )

    @torch.inference_mode()
    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        return self.image(torch.from_numpy(pixels).to(self.device, self.dtype)).float().cpu().numpy()

    @torch.inference_mode()
    def encode_patches(self, patches: np.ndarray, mask: np.ndarray, shapes: np.ndarray) -> np.ndarray:
        out = self.patches(
            torch.from_numpy(patches).to(self.device, self.dtype),
            torch.from_numpy(mask).to(self.device),
            torch.from_numpy(shapes).to(self.device),
        )
        return out.float().cpu().numpy()

    @torch.inference_mode()
    def encode_text(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = self.text(torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device))
        return out.float().cpu().numpy()

    def info(self) -> dict[str, object]:
        return {
            "backend": "torch",
            "device": str(self.device),
            "precision": self.precision,
            "weights": str(self.directory),
            "torch_threads": torch.get_num_threads(),
        }


def export_hf(
    spec: ModelSpec,
    directory: Path,
    out_dir: Path,
    tokenizer_dir: Path | None,
    modalities: tuple[str, ...],
    patches: bool,
) -> Path:
    """Export the transformers model in ``directory`` to ONNX fp32 in ``out_dir`` (atomically): for
    each of ``modalities``, ``image.onnx`` (``pixel_values``, or with ``patches`` SigLIP 2's
    patches, patch mask and grid shapes) and ``text.onnx`` (``input_ids`` and ``attention_mask``,
    the length axis dynamic), and ``clipserve.json``."""
    towers = [f"{modality} tower" for modality in ("image", "text") if modality in modalities]
    with staged_dir(out_dir) as staging, exporting(spec.name, ["weights", *towers]) as progress:
        progress("weights")
        model = load_model(spec, directory)
        batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
        if "image" in modalities:
            progress("image tower")
            if patches:  # NaFlex: any grid within the patch budget
                patches = torch.export.Dim("patches", min=2, max=16384)
                width = model.config.vision_config.num_channels * model.config.vision_config.patch_size**2
                example = (
                    torch.randn(2, 16, width),
                    torch.ones(2, 16, dtype=torch.int64),
                    torch.tensor([[4, 4], [2, 8]]),
                )
                names = ["pixel_values", "pixel_attention_mask", "spatial_shapes"]
                axes = {
                    "pixel_values": {0: batch, 1: patches},
                    "pixel_attention_mask": {0: batch, 1: patches},
                    "spatial_shapes": {0: batch},
                }
                _export(PatchFeatures(model), example, names, axes, staging / "image.onnx")
            else:
                height, width = spec.image_size
                _export(
                    ImageFeatures(model),
                    (torch.randn(2, 3, height, width),),
                    ["pixel_values"],
                    {"pixel_values": {0: batch}},
                    staging / "image.onnx",
                )
        if "text" in modalities:
            progress("text tower")
            length = torch.export.Dim("length", min=2, max=spec.context_length)
            example = (torch.full((2, 5), 5, dtype=torch.int64), torch.ones(2, 5, dtype=torch.int64))
            example[0][:, -1] = spec.eos_id
            axes = {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}}
            _export(
                TextFeatures(model), example, ["input_ids", "attention_mask"], axes, staging / "text.onnx"
            )
        meta = {
            "model": spec.name,
            "spec": dataclasses.asdict(spec),
            "arch": spec.arch,
            "dim": spec.dim,
            "logit_scale": logit_scale(model),
            "text_dynamic_length": spec.text_truncatable,
            "export_format": EXPORT_FORMAT,
            "precision": "fp32",
            "source": str(directory),
            "exporter": f"torch {torch.__version__}, transformers {transformers.__version__}, opset {OPSET}",
        }
        write_export_meta(staging, meta, tokenizer_dir)
    return out_dir


def _export(module: nn.Module, example: tuple, names: list[str], axes: dict, path: Path) -> None:
    # transformers' input checks (torch._check on tensor values) have no ONNX form: the inputs come
    # from clipserve's own preprocessing, which already holds to them.
    with _env(TRANSFORMERS_DISABLE_TORCH_CHECK="1"):
        export_graph(module, example, names, axes, path)
