"""Stand-ins of the ONNX exports others publish, made from a random open_clip model with their
names, dtypes and shapes, and a pre-filled Hugging Face hub cache to serve them from."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn


class ImmichImage(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(image, normalize=True)


class ImmichText(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(text.long(), normalize=True)


def immich_layout(model: nn.Module, arch: str, target: Path, static_batch: bool = True) -> Path:
    """``model`` as immich publishes it: ``config.json``, ``visual/model.onnx`` (``image`` float32
    ``[1,3,S,S]``) with ``visual/preprocess_cfg.json``, ``textual/model.onnx`` (``text`` int32
    ``[1,L]``), both normalised in the graph, output ``embedding``; with ``static_batch=False``
    the 2023 exports' dynamic batch and names (``image_embedding``…)."""
    import open_clip

    model = model.eval()
    (target / "visual").mkdir(parents=True)
    (target / "textual").mkdir()
    config = open_clip.get_model_config(arch)
    (target / "config.json").write_text(json.dumps(config))
    (target / "visual" / "preprocess_cfg.json").write_text(
        json.dumps(open_clip.get_model_preprocess_cfg(model))
    )
    size = config["vision_cfg"]["image_size"]
    context = config["text_cfg"].get("context_length", 77)
    axes = (lambda name: {name: {0: "batch"}}) if not static_batch else (lambda name: None)
    suffix = "" if static_batch else "_embedding"
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # its fused op has no ONNX form in the tracer
    try:
        _export_towers(model, target, size, context, axes, suffix)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    (target / "textual" / "model.armnn").write_bytes(b"ARM NN build: never fetched")
    return target


def _export_towers(model: nn.Module, target: Path, size: int, context: int, axes, suffix: str) -> None:
    with torch.no_grad():
        torch.onnx.export(
            ImmichImage(model),
            (torch.randn(1, 3, size, size),),
            str(target / "visual" / "model.onnx"),
            input_names=["image"],
            output_names=[f"image{suffix}" if suffix else "embedding"],
            dynamic_axes=axes("image"),
            opset_version=17,
            dynamo=False,
        )
        torch.onnx.export(
            ImmichText(model),
            (torch.ones(1, context, dtype=torch.int32),),
            str(target / "textual" / "model.onnx"),
            input_names=["text"],
            output_names=[f"text{suffix}" if suffix else "embedding"],
            dynamic_axes=axes("text"),
            opset_version=17,
            dynamo=False,
        )


def prefill_hub_cache(directory: Path, repo: str, hub_cache: Path) -> Path:
    """``directory`` as the hub cache holds a download of ``repo``: blobs named by their sha256
    (large files) or git blob id (small ones), a snapshot of links, ``refs/main``."""
    root = hub_cache / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(repo.encode()).hexdigest()
    snapshot = root / "snapshots" / commit
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".onnx":
            name = hashlib.sha256(data).hexdigest()
        else:
            name = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
        blob = root / "blobs" / name
        shutil.copyfile(path, blob)
        link = snapshot / path.relative_to(directory)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot
