"""Regenerate ``clipserve/zoo_models.json`` from the installed open_clip's pretrained table.

The zoo is data: this script reads open_clip's model configs and pretrained configs once, on a
developer machine with open_clip installed, and writes the fields clipserve needs, so that the
ONNX path can resolve models without importing torch or open_clip.

Usage: ``python scripts/generate_zoo.py``
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip

from clipserve.families.openclip_config import text_traits

OUT = Path(__file__).resolve().parents[1] / "clipserve" / "zoo_models.json"

# Licences of the published weights, by tag prefix (longest prefix wins).
LICENCES = {
    "openai": "MIT",
    "laion": "MIT",
    "frozen_laion": "MIT",
    "mscoco_finetuned_laion": "MIT",
    "merged2b": "MIT",
    "datacomp": "MIT",
    "commonpool": "MIT",
    "yfcc15m": "MIT",
    "cc12m": "MIT",
    "metaclip": "CC-BY-NC-4.0",
    "dfn": "Apple Sample Code License",
    "datacompdr": "Apple Sample Code License",
    "webli": "Apache-2.0",
}


ARCH_LICENCES = {"nllb-clip": "CC-BY-NC-4.0"}
"""Architectures whose weights have one licence whatever the tag (NLLB-CLIP: its model cards)."""


def licence_for(arch: str, tag: str) -> str:
    """The licence of a model's weights, or a pointer to the model card when unknown."""
    by_arch = [prefix for prefix in ARCH_LICENCES if arch.startswith(prefix)]
    if by_arch:
        return ARCH_LICENCES[by_arch[0]]
    matches = [prefix for prefix in LICENCES if tag.startswith(prefix)]
    return LICENCES[max(matches, key=len)] if matches else "see model card"


def entry(arch: str, tag: str) -> dict:
    model_cfg = open_clip.get_model_config(arch)
    pretrained = open_clip.get_pretrained_cfg(arch, tag)
    vision_cfg = model_cfg["vision_cfg"]
    image_size = vision_cfg.get("image_size", 224)
    if isinstance(image_size, int):
        image_size = [image_size, image_size]
    hub = (pretrained.get("hf_hub") or "").rstrip("/")
    return {
        "arch": arch,
        "tag": tag,
        "dim": model_cfg["embed_dim"],
        "image_size": list(image_size),
        "mean": list(pretrained.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        "std": list(pretrained.get("std", open_clip.OPENAI_DATASET_STD)),
        "interpolation": pretrained.get("interpolation", "bicubic"),
        "resize_mode": pretrained.get("resize_mode", "shortest"),
        **text_traits(model_cfg),
        "quick_gelu": bool(pretrained.get("quick_gelu", False) or model_cfg.get("quick_gelu", False)),
        "hf_hub": hub,
        "url": pretrained.get("url", ""),
        "licence": licence_for(arch, tag),
    }


def main() -> None:
    entries = [entry(arch, tag) for arch, tag in open_clip.list_pretrained()]
    rows = ",\n".join("  " + json.dumps(e) for e in entries)
    header = json.dumps(f"open_clip {open_clip.__version__}")
    OUT.write_text(f'{{"generated_from": {header},\n "models": [\n{rows}\n]}}\n')
    print(f"wrote {len(entries)} models to {OUT}")


if __name__ == "__main__":
    main()
