"""Mean-pooled Hugging Face text encoders (M-CLIP): a transformer, the mean of its last hidden
states over the real tokens, and a linear projection. Needs the ``torch`` extra.

The released M-CLIP checkpoints hold ``transformer.*`` (the base model, with an unused pooler) and
``LinearTransformation.{weight,bias}``. The transformer is built from its base's config (shipped
with clipserve, or a local directory), never downloaded, and the checkpoint is loaded strictly: a
wrong or partial file is refused with the names of the keys that do not fit.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import transformers
from torch import nn

from clipserve.backends.export import MAX_BATCH, OPSET, export_graph, exporting
from clipserve.backends.torch import precision_dtype, resolve_device
from clipserve.errors import WeightsUnavailable, listed
from clipserve.hf_configs import config_dir
from clipserve.weights import EXPORT_FORMAT, staged_dir, write_export_meta

log = logging.getLogger(__name__)

IGNORED_KEYS = ("transformer.pooler.", "transformer.embeddings.position_ids")
"""Checkpoint entries the encoder does not use (the pooler is never called; position ids are a
buffer older transformers saved)."""


class MeanPooledEncoder(nn.Module):
    """``(input_ids, attention_mask) → projection(mean of the real tokens' last hidden states)``."""

    def __init__(self, base: transformers.PretrainedConfig, dim: int) -> None:
        super().__init__()
        self.transformer = transformers.AutoModel.from_config(base, add_pooling_layer=False)
        self.LinearTransformation = nn.Linear(base.hidden_size, dim)  # the checkpoint's name

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.LinearTransformation((hidden * mask).sum(dim=1) / mask.sum(dim=1))


def checkpoint_file(directory: Path) -> Path:
    """The weights file of a model directory (safetensors preferred)."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return directory / name
    raise WeightsUnavailable(f"{directory} holds no model.safetensors or pytorch_model.bin")


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def load_mean_pooled(directory: Path, base: str, dim: int) -> MeanPooledEncoder:
    """The encoder of an M-CLIP directory (``config.json``, weights); ``base`` names the transformer
    unless the directory's ``config.json`` names a local one (``modelBase``)."""
    config = json.loads((directory / "config.json").read_text())
    base_dir = config_dir(config.get("modelBase") or base)
    base_config = transformers.AutoConfig.from_pretrained(base_dir)
    dim = config.get("numDims", dim)
    model = MeanPooledEncoder(base_config, dim).eval()
    state = {
        k: v for k, v in load_state_dict(checkpoint_file(directory)).items() if not k.startswith(IGNORED_KEYS)
    }
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise WeightsUnavailable(
            f"{directory} does not fit a {base} text encoder of dimension {dim}: missing "
            f"{listed(result.missing_keys)}; unexpected {listed(result.unexpected_keys)}"
        )
    return model


class TorchTextEncoder:
    """Runs a :class:`MeanPooledEncoder` on CPU or CUDA (bf16 on CPUs that have it, fp16 on CUDA)."""

    def __init__(self, model: MeanPooledEncoder, device: str, precision: str, source: Path) -> None:
        self.device = resolve_device(device)
        self.dtype = precision_dtype(precision, self.device)
        self.precision = precision
        self.model = model.to(self.device, self.dtype)
        self.source = source

    @torch.inference_mode()
    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        ids = torch.from_numpy(input_ids).to(self.device)
        mask = torch.from_numpy(attention_mask).to(self.device)
        return self.model(ids, mask).float().cpu().numpy()

    def info(self) -> dict[str, object]:
        return {"text_backend": "torch", "text_weights": str(self.source)}


def export_mean_pooled(
    model: MeanPooledEncoder, out_dir: Path, meta: dict, tokenizer_dir: Path | None
) -> Path:
    """Write ``text.onnx`` (inputs ``input_ids`` and ``attention_mask``, dynamic batch and length),
    ``clipserve.json`` and a copy of the tokenizer into ``out_dir``, atomically."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    length = torch.export.Dim("length", min=2, max=4096)
    example = (torch.full((2, 5), 5, dtype=torch.int64), torch.ones(2, 5, dtype=torch.int64))
    axes = {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}}
    with staged_dir(out_dir) as staging, exporting(meta["model"], ["text encoder"]) as progress:
        progress("text encoder")
        export_graph(model, example, ["input_ids", "attention_mask"], axes, staging / "text.onnx")
        exporter = f"torch {torch.__version__}, opset {OPSET}"
        meta = {**meta, "export_format": EXPORT_FORMAT, "precision": "fp32", "exporter": exporter}
        write_export_meta(staging, meta, tokenizer_dir)
    return out_dir
