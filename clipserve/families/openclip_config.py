"""What clipserve needs to know of an open_clip text tower, read from its model config.

Shared by the zoo generator (``scripts/generate_zoo.py``, over open_clip's built-in configs) and by
the loader of a model directory in the hub layout (its ``open_clip_config.json``), so a local or
fine-tuned model gets the same treatment as a zoo entry.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from clipserve.weights import OPEN_CLIP_CONFIG
from clipserve.zoo import ModelSpec, with_preprocess

TRIMS = ("argmax", "eos", "mask", "none")
"""How a batch of token ids may be cut short, exactly:

- ``argmax``: causal tower pooled at the end token (the highest id): run to the batch's longest text;
- ``eos``: causal tower pooled at the first ``eos_id``: likewise;
- ``mask``: a Hugging Face encoder that masks padding (from the pad id): pad to the longest text;
- ``none``: no mask and the pooled position sees padding (SigLIP, CLIPA): always the full context.
"""


def text_traits(model_cfg: dict) -> dict:
    """Tokenizer, cleaning and exact-trimming facts of an open_clip model config."""
    text_cfg = model_cfg["text_cfg"]
    hf_tokenizer = text_cfg.get("hf_tokenizer_name") or ""
    tokenizer_kwargs = text_cfg.get("tokenizer_kwargs") or {}
    return {
        "tokenizer": hf_tokenizer or "clip",
        "tokenizer_clean": tokenizer_kwargs.get("clean", "whitespace") if hf_tokenizer else "lower",
        "strip_sep_token": bool(tokenizer_kwargs.get("strip_sep_token", False)),
        "context_length": text_cfg.get("context_length", 77),
        "text_trim": text_trim(text_cfg, "multimodal_cfg" in model_cfg),
        "eos_id": text_cfg.get("eos_id", 2),
        "hf_text_model": text_cfg.get("hf_model_name") or "",
    }


def text_trim(text_cfg: dict, multimodal: bool) -> str:
    """One of :data:`TRIMS` for a text tower config."""
    if "hf_model_name" in text_cfg:
        return "mask"  # open_clip's HFTextEncoder builds its attention mask from the pad id
    if (
        multimodal
        or text_cfg.get("no_causal_mask", False)
        or text_cfg.get("embed_cls", False)
        or text_cfg.get("pad_id", 0) != 0
        or text_cfg.get("use_pad_mask", False)
    ):
        return "none"
    return {"argmax": "argmax", "eos": "eos"}.get(text_cfg.get("pool_type", "argmax"), "none")


def spec_from_hub_dir(spec: ModelSpec, directory: Path) -> ModelSpec:
    """``spec`` as the model in ``directory`` (hub layout) defines it: its ``open_clip_config.json``
    decides the dimension, image size, preprocessing and text traits (a fine-tune or a local
    variant of the zoo entry gets exactly its own)."""
    config = json.loads((directory / OPEN_CLIP_CONFIG).read_text())
    return spec_from_configs(spec, config["model_cfg"], config.get("preprocess_cfg", {}))


def spec_from_configs(spec: ModelSpec, model_cfg: dict, preprocess: dict) -> ModelSpec:
    """``spec`` as an open_clip model config and preprocess config define it (see
    :func:`spec_from_hub_dir`; immich's ``config.json`` and ``preprocess_cfg.json`` too)."""
    image_size = model_cfg["vision_cfg"].get("image_size", spec.image_size[0])
    changes = {
        **text_traits(model_cfg),
        "dim": model_cfg["embed_dim"],
        "image_size": tuple(image_size) if isinstance(image_size, list) else (image_size, image_size),
        "quick_gelu": bool(model_cfg.get("quick_gelu", False)),
    }
    return with_preprocess(dataclasses.replace(spec, **changes), preprocess)
