"""Local copies of the Hugging Face transformer configs that text towers are built from.

open_clip's Hugging Face text towers (XLM-R, RoBERTa, NLLB) and M-CLIP's text encoders (XLM-R
large, LaBSE) are built from their base model's ``config.json``; the released weights then replace
every parameter. Those small configs ship with clipserve (``clipserve/assets/hf_configs/``), so a
model directory alone is enough offline, and the base model's weights are never downloaded just to
be overwritten.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from clipserve.errors import UnsupportedModel


def config_dir(name: str) -> Path:
    """A directory holding ``config.json`` for ``name``: a local directory as given, else the copy
    shipped with clipserve for a hub name (``xlm-roberta-large``, ``facebook/nllb-200-distilled-600M``…).
    """
    given = Path(name).expanduser()
    if (given / "config.json").is_file():
        return given
    shipped = Path(
        str(resources.files("clipserve").joinpath("assets", "hf_configs", name.replace("/", "--")))
    )
    if (shipped / "config.json").is_file():
        return shipped
    raise UnsupportedModel(
        f"no config for the Hugging Face model {name!r} ships with clipserve; give a directory with "
        "its config.json instead of the name"
    )
