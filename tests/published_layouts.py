"""Stand-ins of the ONNX exports others publish, made from a random open_clip model with their
names, dtypes and shapes, and a pre-filled Hugging Face hub cache to serve them from."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import zipfile
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


def immich_layout(
    model: nn.Module,
    arch: str | dict,
    target: Path,
    static_batch: bool = True,
    preprocess: dict | None = None,
    tokenizer: Path | None = None,
) -> Path:
    """``model`` as immich publishes it: ``config.json``, ``visual/model.onnx`` (``image`` float32
    ``[1,3,S,S]``) with ``visual/preprocess_cfg.json``, ``textual/model.onnx`` (``text`` int32
    ``[1,L]``), both normalised in the graph, output ``embedding``; with ``static_batch=False``
    the 2023 exports' dynamic batch and names (``image_embedding``…). ``arch`` is an open_clip
    architecture or a model config; ``preprocess`` replaces open_clip's preprocess config of the
    model, and ``tokenizer``'s files are copied into ``textual/``."""
    import open_clip

    model = model.eval()
    (target / "visual").mkdir(parents=True)
    (target / "textual").mkdir()
    config = open_clip.get_model_config(arch) if isinstance(arch, str) else arch
    (target / "config.json").write_text(json.dumps(config))
    preprocess = preprocess if preprocess is not None else open_clip.get_model_preprocess_cfg(model)
    (target / "visual" / "preprocess_cfg.json").write_text(json.dumps(preprocess))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json") if tokenizer else ():
        shutil.copy(tokenizer / name, target / "textual" / name)
    size = config["vision_cfg"]["image_size"]
    context = config["text_cfg"].get("context_length", 77)
    axes = (lambda name: {name: {0: "batch"}}) if not static_batch else (lambda name: None)
    suffix = "" if static_batch else "_embedding"
    with _no_fastpath():
        _export_towers(model, target, size, context, axes, suffix)
    (target / "textual" / "model.armnn").write_bytes(b"ARM NN build: never fetched")
    return target


def _export_towers(model: nn.Module, target: Path, size: int, context: int, axes, suffix: str) -> None:
    with torch.no_grad():
        _export(
            ImmichImage(model),
            (torch.randn(1, 3, size, size),),
            str(target / "visual" / "model.onnx"),
            ["image"],
            [f"image{suffix}" if suffix else "embedding"],
            axes("image"),
        )
        _export(
            ImmichText(model),
            (torch.ones(1, context, dtype=torch.int32),),
            str(target / "textual" / "model.onnx"),
            ["text"],
            [f"text{suffix}" if suffix else "embedding"],
            axes("text"),
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


TEXT_INPUTS = ["input_ids", "attention_mask"]
TEXT_OUTPUTS = ["text_embeds", "last_hidden_state"]


class MaskedText(nn.Module):
    """open_clip's ``encode_text`` fed as transformers-style graphs are (``input_ids`` and
    ``attention_mask``): the mask zeroes the embeddings of padding, which the causal attention
    keeps from the pooled end token anyway, so only a wrong mask (one hiding a real token) changes
    the vector."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from open_clip.transformer import text_global_pool

        model, ids = self.model, input_ids.long()
        x = model.token_embedding(ids) * attention_mask.unsqueeze(-1).float()
        x = model.transformer(x + model.positional_embedding, attn_mask=model.attn_mask)
        states = model.ln_final(x)
        pooled = text_global_pool(states, ids, model.text_pool_type)
        return pooled @ model.text_projection, states


class Visual(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode_image(pixel_values), pixel_values.mean(dim=(2, 3))


def _dynamic(*names: str) -> dict:
    return {name: {0: "batch"} for name in names}


def clip_as_service_layout(model: nn.Module, size: int, target: Path, zipped: bool = False) -> dict[str, str]:
    """``model`` as clip-as-service keeps it: ``textual.onnx`` (``input_ids``, ``attention_mask``
    int32 ``[N, 77]``) and ``visual.onnx`` (``pixel_values``; with ``zipped``, a ``visual.zip`` of
    the graph and its external data), outputs not normalised, a second output after the first.
    Returns ``{part: md5}`` of the files as published."""
    import onnx

    model = model.eval()
    target.mkdir(parents=True)
    with _no_fastpath(), torch.no_grad():
        ids = torch.ones(2, 77, dtype=torch.int32)
        _export(
            MaskedText(model),
            (ids, ids),
            target / "textual.onnx",
            TEXT_INPUTS,
            TEXT_OUTPUTS,
            _dynamic(*TEXT_INPUTS),
        )
        _export(
            Visual(model),
            (torch.randn(2, 3, size, size),),
            str(target / "visual.onnx"),
            ["pixel_values"],
            ["image_embeds", "pooled"],
            _dynamic("pixel_values"),
        )
    if zipped:
        graph = onnx.load(str(target / "visual.onnx"))
        staging = target / "zipped"
        staging.mkdir()
        onnx.save_model(
            graph, str(staging / "visual.onnx"), save_as_external_data=True, location="visual.data"
        )
        with zipfile.ZipFile(target / "visual.zip", "w") as archive:
            for path in staging.iterdir():
                archive.write(path, path.name)
        shutil.rmtree(staging)
        (target / "visual.onnx").unlink()
    published = {
        "textual": target / "textual.onnx",
        "visual": target / ("visual.zip" if zipped else "visual.onnx"),
    }
    return {part: hashlib.md5(path.read_bytes()).hexdigest() for part, path in published.items()}


def fastembed_layout(model: nn.Module, vision: Path, text: Path) -> None:
    """``model`` as fastembed's two repos hold ViT-B-32: each a flat ``model.onnx`` exported from
    transformers (``pixel_values``; ``input_ids`` and ``attention_mask`` int64), outputs not
    normalised, ``preprocessor_config.json`` (a ``CLIPImageProcessor``) beside the vision one."""
    import open_clip

    model = model.eval()
    vision.mkdir(parents=True)
    text.mkdir(parents=True)
    with _no_fastpath(), torch.no_grad():
        _export(
            Visual(model),
            (torch.randn(2, 3, 224, 224),),
            str(vision / "model.onnx"),
            ["pixel_values"],
            ["image_embeds", "last_hidden_state"],
            _dynamic("pixel_values"),
        )
        ids = torch.ones(2, 77, dtype=torch.int64)
        lengths = {name: {0: "batch", 1: "length"} for name in TEXT_INPUTS}
        _export(MaskedText(model), (ids, ids), text / "model.onnx", TEXT_INPUTS, TEXT_OUTPUTS, lengths)
    processor = {
        "crop_size": {"height": 224, "width": 224},
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "image_mean": list(open_clip.OPENAI_DATASET_MEAN),
        "image_std": list(open_clip.OPENAI_DATASET_STD),
        "image_processor_type": "CLIPImageProcessor",
        "resample": 3,
        "size": {"shortest_edge": 224},
    }
    (vision / "preprocessor_config.json").write_text(json.dumps(processor))
    (vision / "config.json").write_text(
        json.dumps({"model_type": "clip_vision_model", "projection_dim": 512})
    )
    (text / "config.json").write_text(json.dumps({"model_type": "clip_text_model", "pad_token_id": 1}))


def _export(module: nn.Module, example: tuple, path, inputs: list, outputs: list, axes) -> None:
    """The legacy (tracing) ONNX exporter at opset 17, as the publishers used it."""
    torch.onnx.export(
        module,
        example,
        str(path),
        input_names=inputs,
        output_names=outputs,
        dynamic_axes=axes,
        opset_version=17,
        dynamo=False,
    )


class _no_fastpath:
    """nn.MultiheadAttention's fused op has no ONNX form in the tracer: off while exporting."""

    def __enter__(self) -> None:
        self.was = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)

    def __exit__(self, *exc: object) -> None:
        torch.backends.mha.set_fastpath_enabled(self.was)


class MClipText(nn.Module):
    """M-CLIP's text encoder as immich exports it: ``input_ids`` and ``attention_mask`` (int32),
    the transformer, mean pooling over the mask, the projection, normalised."""

    def __init__(self, mclip: nn.Module) -> None:
        super().__init__()
        self.mclip = mclip

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.mclip.transformer(input_ids=input_ids.long(), attention_mask=attention_mask.long())[0]
        mask = attention_mask.float().unsqueeze(2)
        pooled = (states * mask).sum(dim=1) / mask.sum(dim=1)
        return torch.nn.functional.normalize(self.mclip.LinearTransformation(pooled), dim=-1)


def immich_mclip_layout(clip: nn.Module, mclip: nn.Module, tokenizer: Path, target: Path) -> Path:
    """An M-CLIP model as immich publishes it: the CLIP ViT-B-32 image tower (``config.json`` is its
    config) and the text encoder, ``input_ids`` and ``attention_mask`` int32 ``[1, 77]``."""
    immich_layout(clip, "ViT-B-32", target, tokenizer=tokenizer)
    ids = torch.ones(1, 77, dtype=torch.int32)
    # Traced with padding: transformers skips a mask of all ones, and the trace would keep that.
    mask = (torch.arange(77) < 5).int()[None]
    with torch.no_grad():
        _export(
            MClipText(copy.deepcopy(mclip).eval()),  # tracing changes a transformers model it runs
            (ids, mask),
            target / "textual" / "model.onnx",
            TEXT_INPUTS,
            ["embedding"],
            None,
        )
    return target
