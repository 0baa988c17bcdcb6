"""Export an open_clip checkpoint to clipserve's ONNX layout (needs the ``torch`` extra).

The layout is a directory with ``image.onnx`` and ``text.onnx`` (dynamic batch axis; the text graph
also has a dynamic sequence axis where the zoo marks the tower as truncatable) and ``clipserve.json``
with what the runtime needs (model name, dim, logit scale). The torch.export-based ("dynamo") ONNX
exporter is used: the legacy tracer freezes the attention reshapes to the traced sequence length.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch

from clipserve.backends.torch import ImageTower, TextTower, load_open_clip_model
from clipserve.preprocess.text import ClipTokenizer
from clipserve.weights import EXPORT_FORMAT, ONNX_MARKER
from clipserve.zoo import ModelSpec

log = logging.getLogger(__name__)

OPSET = 18
MAX_BATCH = 65536


def export_onnx(spec: ModelSpec, checkpoint: Path, out_dir: Path) -> Path:
    """Export ``checkpoint`` (weights of ``spec``) into ``out_dir``; returns ``out_dir``.

    The export is written beside ``out_dir`` first and renamed into place, so a crash or a
    concurrent export never leaves a half-written model where the runtime looks.
    """
    model = load_open_clip_model(spec, checkpoint)
    staging = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    height, width = spec.image_size
    log.info("exporting %s image tower to ONNX", spec.name)
    _export(ImageTower(model), torch.randn(2, 3, height, width), "pixels", {0: batch}, staging / "image.onnx")

    dynamic_length = spec.text_truncatable
    tokens = torch.from_numpy(
        ClipTokenizer(spec.context_length)(["a photo", "two cats"], trim=dynamic_length)
    )
    text_axes = {0: batch}
    if dynamic_length:
        text_axes[1] = torch.export.Dim("length", min=2, max=spec.context_length)
    log.info("exporting %s text tower to ONNX (dynamic length: %s)", spec.name, dynamic_length)
    _export(TextTower(model, dynamic_length), tokens, "tokens", text_axes, staging / "text.onnx")

    meta = {
        "model": spec.name,
        "arch": spec.arch,
        "dim": spec.dim,
        "logit_scale": model.logit_scale.exp().item(),
        "text_dynamic_length": dynamic_length,
        "export_format": EXPORT_FORMAT,
        "precision": "fp32",
        "source": str(checkpoint),
        "exporter": f"torch {torch.__version__}, opset {OPSET}",
    }
    (staging / ONNX_MARKER).write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return out_dir


def _export(module: torch.nn.Module, example: torch.Tensor, input_name: str, axes: dict, path: Path) -> None:
    module.eval()
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=True,
            opset_version=OPSET,
            input_names=[input_name],
            output_names=["embeddings"],
            dynamic_shapes={input_name: axes},
            verbose=False,
        )
