"""The model zoo: ``ARCH::TAG`` names mapped to :class:`ModelSpec` entries.

The table itself is data: ``zoo_models.json``, generated from open_clip's pretrained table by
``scripts/generate_zoo.py``, and ``zoo_extra.json``, written by hand for the models open_clip does
not list (M-CLIP). This module only loads them, resolves names and aliases, and lists them.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from clipserve.errors import UnknownModel

DEFAULT_MODEL = "ViT-B-32::openai"
QUICKGELU_SUFFIX = "-quickgelu"


@dataclass(frozen=True)
class ModelSpec:
    """Everything clipserve needs to know about one pretrained model."""

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
    """``clip`` for the built-in CLIP BPE tokenizer, else the Hugging Face repo of its tokenizer."""
    quick_gelu: bool
    hf_hub: str
    url: str
    licence: str
    tokenizer_clean: str = "lower"
    """Text cleaning before tokenising: ``lower``, ``whitespace``, ``canonicalize`` or ``none``."""
    strip_sep_token: bool = False
    """Replace the separator token with 0 (CLIPA)."""
    text_trim: str = "argmax"
    """How a batch of texts may be cut to its longest text, exactly (see ``openclip_config.TRIMS``)."""
    eos_id: int = 2
    """The end token pooled by ``eos`` towers."""
    hf_text_model: str = ""
    """The Hugging Face encoder of the text tower (open_clip's ``hf_model_name``), if any."""
    family: str = "open_clip"
    """Which loader builds it (``clipserve.families.LOADERS``)."""
    display_name: str = ""
    """The canonical name when it is not ``ARCH::TAG`` (``M-CLIP/XLM-Roberta-Large-Vit-B-32``)."""
    image_model: str = ""
    """The zoo model whose image tower this one pairs with its text tower (M-CLIP)."""
    text_base: str = ""
    """The base transformer of a separate text encoder (M-CLIP's ``modelBase``)."""
    sha256: str = ""
    """The checksum of the weights file at ``url``, when its publisher recorded one (AudioCLIP)."""
    size: int = 0
    """The size in bytes of the weights file at ``url``, when known."""
    hf_processor: str = ""
    """The model's ``preprocessor_config.json`` (family ``transformers``), as JSON: its image
    preprocessing, kept with the spec so that an export runs without the model's directory."""

    @property
    def name(self) -> str:
        """The canonical name: ``ARCH::TAG`` unless the entry names itself."""
        return self.display_name or f"{self.arch}::{self.tag}"

    @property
    def text_truncatable(self) -> bool:
        """True when batches of texts may stop at their longest text with unchanged vectors."""
        return self.text_trim != "none"


IMAGE_FIELDS = ("image_size", "mean", "std", "interpolation", "resize_mode", "quick_gelu")
"""What an entry pairing another model's image tower (``image_model``) takes from that model."""


@cache
def _table() -> dict[str, ModelSpec]:
    table: dict[str, ModelSpec] = {}
    for file in ("zoo_models.json", "zoo_extra.json"):
        for row in json.loads(resources.files("clipserve").joinpath(file).read_text())["models"]:
            if row.get("image_model"):
                paired = table[row["image_model"]]
                row = {name: getattr(paired, name) for name in IMAGE_FIELDS} | row
            spec = spec_from_row(row)
            table[spec.name] = spec
    return table


def spec_from_row(row: dict) -> ModelSpec:
    """A spec from its JSON form (a zoo row, or the copy an export keeps in its ``clipserve.json``)."""
    return ModelSpec(
        **dict(row, image_size=tuple(row["image_size"]), mean=tuple(row["mean"]), std=tuple(row["std"]))
    )


OTHER_NAMES = {
    "ViT-L/14@336px": "ViT-L-14-336::openai",
    "openai/clip-vit-base-patch32": "ViT-B-32::openai",
    "openai/clip-vit-base-patch16": "ViT-B-16::openai",
    "openai/clip-vit-large-patch14": "ViT-L-14::openai",
    "openai/clip-vit-large-patch14-336": "ViT-L-14-336::openai",
}
"""Names other tools give the same weights: OpenAI's ``clip.load`` and Hugging Face's transformers."""


@cache
def _aliases() -> dict[str, str]:
    """Lower-cased lookup keys → canonical names, including ``-quickgelu`` and tag-less forms."""
    table = _table()
    aliases = {_normalise(name): name for name in table}
    aliases.update({_normalise(f"{spec.arch}::{spec.tag}"): spec.name for spec in table.values()})
    for spec in table.values():
        if spec.arch.endswith(QUICKGELU_SUFFIX):
            plain = f"{spec.arch[: -len(QUICKGELU_SUFFIX)]}::{spec.tag}".lower()
            aliases.setdefault(plain, spec.name)
    for spec in table.values():  # ARCH alone → its openai weights, else its first listed tag
        arch = spec.arch.lower()
        if spec.tag == "openai" or arch not in aliases:
            aliases[arch] = spec.name
    for spec in table.values():  # the Hugging Face repo of the weights (open_clip's ``hf-hub:`` names)
        if spec.hf_hub:
            aliases.setdefault(_normalise(spec.hf_hub.rstrip("/")), spec.name)
    aliases.update({_normalise(name): canonical for name, canonical in OTHER_NAMES.items()})
    return aliases


def openai_file_model(path: Path) -> str:
    """The zoo model of an OpenAI ``clip`` checkpoint, by the file name ``clip.load`` caches it under
    (``ViT-B-32.pt`` → ``ViT-B-32::openai``, ``ViT-L-14-336px.pt`` → ``ViT-L-14-336::openai``).

    Raises:
        UnknownModel: the name is not one of OpenAI's.
    """
    model = f"{path.stem.removesuffix('px')}::openai"
    if canonical_name(model) is None or path.suffix != ".pt":
        openai = ", ".join(f"{n}.pt" for n in ("RN50", "RN101", "RN50x4", "ViT-B-32", "ViT-L-14-336px"))
        raise UnknownModel(
            f"{path} is a file, and not named as OpenAI's clip checkpoints are ({openai}, …): name its model "
            f"and pass the file as weights (Encoder('ARCH::TAG', weights={str(path)!r}))"
        )
    return canonical_name(model)


def _normalise(name: str) -> str:
    return name.strip().removeprefix("hf-hub:").replace("/", "-").lower()


def get_spec(name: str = DEFAULT_MODEL) -> ModelSpec:
    """Resolve a model name (``ARCH::TAG``, case-insensitive; ``ARCH`` alone picks its default tag).

    Other tools' names resolve too: OpenAI's (``ViT-B/32``, ``ViT-L/14@336px``), Hugging Face
    repos of the weights (``openai/clip-vit-base-patch32``, ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``,
    ``hf-hub:`` prefixed as open_clip writes them).

    ``ViT-B-32::metaclip_400m`` resolves to the ``ViT-B-32-quickgelu`` entry, whose activation the
    weights were trained with, without the user naming it.

    Raises:
        UnknownModel: the name is not in the zoo; the message suggests close names.
    """
    known = canonical_name(name)
    if known is not None:
        return _table()[known]
    key, aliases = _normalise(name), _aliases()
    close = difflib.get_close_matches(key, aliases.keys(), n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(aliases[c] for c in close)}?" if close else ""
    raise UnknownModel(
        f"unknown model {name!r}.{hint} `clipserve models` lists all {len(_table())} known models."
    )


def with_preprocess(spec: ModelSpec, preprocess_cfg: dict) -> ModelSpec:
    """``spec`` with the preprocessing an open_clip ``preprocess_cfg`` gives (``size``, ``mean``,
    ``std``, ``interpolation``, ``resize_mode``), where it gives one."""
    changes: dict = {}
    size = preprocess_cfg.get("size")
    if size is not None:
        changes["image_size"] = tuple(size) if isinstance(size, list | tuple) else (size, size)
    for key in ("mean", "std"):
        if key in preprocess_cfg:
            changes[key] = tuple(preprocess_cfg[key])
    for key in ("interpolation", "resize_mode"):
        if key in preprocess_cfg:
            changes[key] = preprocess_cfg[key]
    return dataclasses.replace(spec, **changes)


def canonical_name(name: str) -> str | None:
    """The zoo's canonical name for ``name`` or any of its aliases, else None (cheap: no suggestions)."""
    return _aliases().get(_normalise(name))


def list_models() -> list[ModelSpec]:
    """Every model of the zoo, in open_clip's order."""
    return list(_table().values())
