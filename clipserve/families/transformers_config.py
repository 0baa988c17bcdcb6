"""What a Hugging Face transformers model directory says about itself: its class, dimension,
preprocessing and text handling, as a :class:`~clipserve.zoo.ModelSpec` of the ``transformers``
family; and where a hub repo of one is found (the hub cache, a download).

The supported classes are data (:data:`ARCHITECTURES`): each names the modalities it embeds, how its
text tower pools (which decides whether a batch may run at its longest text, exactly), and how its
images are given.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from clipserve.errors import UnknownModel, UnsupportedModel, WeightsUnavailable
from clipserve.preprocess.hf_image import HfImageSettings
from clipserve.zoo import ModelSpec

FAMILY = "transformers"
CONFIG = "config.json"
PROCESSOR = "preprocessor_config.json"
PROCESSOR_BUNDLE = "processor_config.json"
"""What ``save_pretrained`` of a whole processor writes in transformers 5, the image processor's
settings nested under ``image_processor`` (transformers 4 wrote them to ``preprocessor_config.json``)."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HUB_FILES = (
    CONFIG,
    PROCESSOR,
    PROCESSOR_BUNDLE,
    *TOKENIZER_FILES,
    *WEIGHT_FILES,
    "model.safetensors.index.json",
)
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
"""A hub repo id: ``owner/name``."""


@dataclass(frozen=True)
class Architecture:
    """A supported transformers class: what it embeds and how.

    ``text``: how the text tower pools its tokens: ``eos`` (causal, at the end token: a batch may
    stop at its longest text), ``cls`` (bidirectional with a padding mask, at the first token: the
    same), ``last`` (at the last position, unmasked: every text padded to the full length, as the
    model was trained). ``images``: ``pixels`` (a fixed size) or ``patches`` (NaFlex: any size).
    """

    modalities: tuple[str, ...]
    text: str = ""
    images: str = "pixels"


ARCHITECTURES: dict[str, Architecture] = {
    "CLIPModel": Architecture(("image", "text"), text="eos"),
    "CLIPVisionModelWithProjection": Architecture(("image",)),
    "CLIPTextModelWithProjection": Architecture(("text",), text="eos"),
    "SiglipModel": Architecture(("image", "text"), text="last"),
    "Siglip2Model": Architecture(("image", "text"), text="last", images="patches"),
    "ChineseCLIPModel": Architecture(("image", "text"), text="cls"),
}
MODEL_TYPES = {
    "clip": "CLIPModel",
    "clip_vision_model": "CLIPVisionModelWithProjection",
    "clip_text_model": "CLIPTextModelWithProjection",
    "siglip": "SiglipModel",
    "siglip2": "Siglip2Model",
    "chinese_clip": "ChineseCLIPModel",
}
"""``model_type`` → class, for a ``config.json`` without ``architectures``."""


def read_config(directory: Path) -> dict:
    return json.loads((directory / CONFIG).read_text())


def model_class(config: dict) -> str:
    """The class a ``config.json`` names (``architectures``, else its ``model_type``)."""
    named = config.get("architectures") or []
    if named:
        return named[0]
    return MODEL_TYPES.get(config.get("model_type", ""), config.get("model_type") or "no class")


def is_transformers_dir(path: Path) -> bool:
    """True for a directory with a transformers ``config.json`` (supported or not), and not a
    clipserve export or an open_clip hub directory (which have their own markers)."""
    return (
        path.is_dir()
        and (path / CONFIG).is_file()
        and not (path / "clipserve.json").is_file()
        and not (path / "open_clip_config.json").is_file()
    )


def names_supported_class(path: Path) -> bool:
    """True for a transformers directory whose ``config.json`` names a supported class (M-CLIP's
    directories, say, have a ``config.json`` too, of their own kind)."""
    if not is_transformers_dir(path):
        return False
    try:
        return model_class(read_config(path)) in ARCHITECTURES
    except (OSError, ValueError):
        return False


def check_supported(directory: Path) -> tuple[str, Architecture]:
    """The directory's class and what it embeds, or :class:`UnsupportedModel` naming what was found."""
    try:
        config = read_config(directory)
    except (OSError, ValueError) as exc:
        raise UnsupportedModel(f"{directory}/{CONFIG} is not a readable JSON config: {exc}") from exc
    name = model_class(config)
    if name not in ARCHITECTURES:
        raise UnsupportedModel(
            f"{directory}/{CONFIG} names {name}: not a supported family (transformers classes: "
            f"{', '.join(ARCHITECTURES)}; or a clipserve export, or an open_clip model directory)"
        )
    if not any(
        (directory / weights).is_file() for weights in (*WEIGHT_FILES, "model.safetensors.index.json")
    ):
        raise WeightsUnavailable(f"{directory} holds a {name} config but no {' or '.join(WEIGHT_FILES)}")
    return name, ARCHITECTURES[name]


def spec_from_directory(directory: Path, name: str | None = None) -> ModelSpec:
    """The spec of the transformers model in ``directory``, named ``name`` (default: the path)."""
    cls, architecture = check_supported(directory)
    config = read_config(directory)
    processor = image_processor_config(directory)
    if "image" in architecture.modalities and not processor:
        raise WeightsUnavailable(
            f"{directory} has no image processor settings ({PROCESSOR}, or {PROCESSOR_BUNDLE} with an "
            f"image_processor entry): the image processing of a {cls} comes from them. Save the processor "
            "the model was trained with beside it: AutoProcessor.from_pretrained(BASE_MODEL)"
            ".save_pretrained(directory)"
        )
    image = HfImageSettings.from_config(processor) if processor else HfImageSettings()
    text_config = config.get("text_config", config)
    vision_config = config.get("vision_config", config)
    tokenizer = _json_or_empty(directory / "tokenizer_config.json")
    context = _context_length(text_config, tokenizer)
    eos = text_config.get("eos_token_id", 2)
    trim = {"eos": "argmax" if eos == 2 else "eos", "cls": "mask", "last": "none", "": "none"}[
        architecture.text
    ]
    size = image.output_size or (vision_config.get("image_size", 224),) * 2
    return ModelSpec(
        arch=cls,
        tag=FAMILY,
        dim=_dim(cls, config),
        image_size=tuple(size),
        mean=tuple(image.mean or (0.0, 0.0, 0.0)),
        std=tuple(image.std or (1.0, 1.0, 1.0)),
        interpolation="bicubic" if image.resample == 3 else "bilinear",
        resize_mode="squash" if image.height and not image.crop else "shortest",
        context_length=context,
        tokenizer="the model's own" if "text" in architecture.modalities else "",
        tokenizer_clean="none",
        quick_gelu=False,
        hf_hub="",
        url="",
        licence="see the model's card",
        text_trim=trim,
        eos_id=eos if isinstance(eos, int) else 2,
        family=FAMILY,
        display_name=name or str(directory),
        hf_processor=json.dumps(processor, sort_keys=True),
    )


def _dim(cls: str, config: dict) -> int:
    if "projection_dim" in config:
        return int(config["projection_dim"])
    vision = config.get("vision_config", config)
    return int(config.get("text_config", {}).get("projection_size") or vision["hidden_size"])


def _context_length(text_config: dict, tokenizer: dict) -> int:
    positions = int(text_config.get("max_position_embeddings", 77))
    given = tokenizer.get("model_max_length")
    return min(positions, int(given)) if isinstance(given, int | float) and given < 10**6 else positions


def image_processor_config(directory: Path) -> dict:
    """The image processor's settings a transformers model directory holds: ``preprocessor_config.json``
    (transformers 4, or an image processor saved on its own), else the ``image_processor`` entry of
    ``processor_config.json`` (a whole processor saved by transformers 5); ``{}`` when neither has them."""
    own = _json_or_empty(directory / PROCESSOR)
    return own or _json_or_empty(directory / PROCESSOR_BUNDLE).get("image_processor", {})


def _json_or_empty(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def looks_like_repo(name: str) -> bool:
    return bool(REPO_ID.match(name)) and not Path(name).expanduser().exists()


def hub_snapshot(repo: str, offline: bool) -> Path:
    """The local snapshot of hub repo ``repo`` (the Hugging Face cache, else a download of the files
    a transformers CLIP-family model needs).

    Raises:
        UnknownModel: offline and not cached, or the download failed; the message names the repo
            and every place looked.
    """
    from huggingface_hub import constants, snapshot_download

    from clipserve.weights import hub_unreachable, hub_unreachable_note

    looked = [f"the Hugging Face cache {constants.HF_HUB_CACHE} (set HF_HUB_CACHE or HF_HOME for another)"]
    try:
        return Path(snapshot_download(repo, allow_patterns=list(HUB_FILES), local_files_only=True))
    except Exception as exc:  # not cached: the hub library's own error types vary by version
        looked[0] += f": {type(exc).__name__}"
    if offline:
        looked.append("downloads skipped: offline (CLIPSERVE_OFFLINE or HF_HUB_OFFLINE is set)")
    else:
        if reason := hub_unreachable():
            looked.append(hub_unreachable_note(reason))
        else:
            try:
                return Path(snapshot_download(repo, allow_patterns=list(HUB_FILES)))
            except Exception as exc:
                looked.append(f"Hugging Face Hub {repo}: {type(exc).__name__}: {exc}")
    places = "\n".join(f"  - {place}" for place in looked)
    raise UnknownModel(
        f"{repo!r} is not in the zoo, and no transformers model of that hub repo was found. Looked in:\n"
        f"{places}\nPass a local directory (config.json, the weights, the processor's and the tokenizer's "
        "files, as save_pretrained writes them), or `clipserve models` for the zoo's names."
    )
