"""The model zoo: ``ARCH::TAG`` names mapped to :class:`ModelSpec` entries.

The table itself is data (``zoo_models.json``, generated from open_clip's pretrained table by
``scripts/generate_zoo.py``); this module only loads it, resolves names and aliases, and lists it.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

from clipserve.errors import UnknownModel

DEFAULT_MODEL = "ViT-B-32::openai"
QUICKGELU_SUFFIX = "-quickgelu"
BUILTIN_TOKENIZER = "clip"


@dataclass(frozen=True)
class ModelSpec:
    """Everything clipserve needs to know about one pretrained CLIP model."""

    arch: str
    """open_clip architecture name (config name), e.g. ``ViT-B-32`` or ``ViT-B-32-quickgelu``."""
    tag: str
    """Pretrained tag, e.g. ``openai`` or ``laion2b_s34b_b79k``."""
    dim: int
    """Output embedding dimension."""
    image_size: tuple[int, int]
    """Model input (height, width)."""
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    """``bicubic`` or ``bilinear``."""
    resize_mode: str
    """``shortest`` (resize + centre crop), ``squash`` or ``longest`` (resize + pad)."""
    context_length: int
    tokenizer: str
    """``clip`` for the built-in CLIP BPE tokenizer, else a Hugging Face tokenizer name."""
    text_truncatable: bool
    """Causal text tower with end-token pooling: may stop at the longest real token, exactly."""
    quick_gelu: bool
    hf_hub: str
    url: str
    licence: str
    family: str = "open_clip"
    """Which loader builds it (``clipserve.families.LOADERS``)."""

    @property
    def name(self) -> str:
        """The canonical ``ARCH::TAG`` name."""
        return f"{self.arch}::{self.tag}"

    @property
    def backends(self) -> tuple[str, ...]:
        """Backends that can run this model in this release."""
        return ("torch", "onnx") if self.tokenizer == BUILTIN_TOKENIZER else ()

    @property
    def unsupported_reason(self) -> str | None:
        """Why no backend runs this model, or None when it runs."""
        if self.tokenizer != BUILTIN_TOKENIZER:
            return (
                f"{self.name} uses the Hugging Face tokenizer {self.tokenizer!r}; this release of "
                "clipserve runs models with the CLIP BPE tokenizer only"
            )
        return None


@cache
def _table() -> dict[str, ModelSpec]:
    raw = json.loads(resources.files("clipserve").joinpath("zoo_models.json").read_text())
    table: dict[str, ModelSpec] = {}
    for row in raw["models"]:
        row = dict(row, image_size=tuple(row["image_size"]), mean=tuple(row["mean"]), std=tuple(row["std"]))
        spec = ModelSpec(**row)
        table[spec.name] = spec
    return table


@cache
def _aliases() -> dict[str, str]:
    """Lower-cased lookup keys → canonical names, including ``-quickgelu`` and tag-less forms."""
    table = _table()
    aliases = {name.lower(): name for name in table}
    for spec in table.values():
        if spec.arch.endswith(QUICKGELU_SUFFIX):
            plain = f"{spec.arch[: -len(QUICKGELU_SUFFIX)]}::{spec.tag}".lower()
            aliases.setdefault(plain, spec.name)
    for spec in table.values():  # ARCH alone → its openai weights, else its first listed tag
        arch = spec.arch.lower()
        if spec.tag == "openai" or arch not in aliases:
            aliases[arch] = spec.name
    return aliases


def _normalise(name: str) -> str:
    return name.strip().replace("/", "-").lower()


def get_spec(name: str = DEFAULT_MODEL) -> ModelSpec:
    """Resolve a model name (``ARCH::TAG``, case-insensitive; ``ARCH`` alone picks its default tag).

    ``ViT-B-32::metaclip_400m`` resolves to the ``ViT-B-32-quickgelu`` entry, whose activation the
    weights were trained with, without the user naming it.

    Raises:
        UnknownModel: the name is not in the zoo; the message suggests close names.
    """
    key = _normalise(name)
    aliases = _aliases()
    if key in aliases:
        return _table()[aliases[key]]
    close = difflib.get_close_matches(key, aliases.keys(), n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(aliases[c] for c in close)}?" if close else ""
    raise UnknownModel(
        f"unknown model {name!r}.{hint} `clipserve models` lists all {len(_table())} known models."
    )


def list_models() -> list[ModelSpec]:
    """Every model of the zoo, in open_clip's order."""
    return list(_table().values())
