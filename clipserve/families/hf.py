"""The transformers family: a Hugging Face CLIP-family model directory (``CLIPModel``, the split
``CLIPVisionModelWithProjection``/``CLIPTextModelWithProjection``, ``SiglipModel``,
``Siglip2Model``, ``ChineseCLIPModel``), as transformers itself runs it.

- Preprocessing comes from the model's own files: ``preprocessor_config.json``
  (:mod:`clipserve.preprocess.hf_image`) and ``tokenizer.json``.
- torch runs transformers' own modules; onnx runs their export, made once into the cache like every
  other export (the export then runs without torch or transformers).
- A text tower that pools at the end token (CLIP) or masks its padding (Chinese-CLIP) runs a batch
  at its longest text, exactly; SigLIP's, which pools the last position, always at full length.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clipserve.backends.factory import backend_weights, fingerprint
from clipserve.cache import enforce_cap
from clipserve.errors import UnsupportedModel, WeightsUnavailable
from clipserve.families.base import Tower
from clipserve.families.towers import CPU_IMAGE_BATCH, check_pixels, check_text, image_limits, normalised
from clipserve.families.transformers_config import ARCHITECTURES, Architecture
from clipserve.inputs import Item
from clipserve.preprocess.hf_image import HfImagePreprocessor, HfImageSettings
from clipserve.preprocess.image import ImageLimits, decoded_image
from clipserve.preprocess.text import HfTokenizer
from clipserve.settings import EngineSettings
from clipserve.weights import TOKENIZER_DIR, cache_dir, staged_dir
from clipserve.zoo import ModelSpec


class TransformersModel:
    """A transformers model on one backend; see :class:`clipserve.families.base.Model`.

    ``settings.weights`` is the model's directory (as ``save_pretrained`` writes it, or a hub
    snapshot) or its clipserve ONNX export.
    """

    def __init__(self, spec: ModelSpec, settings: EngineSettings, spin: bool = True) -> None:
        if settings.fast_decode or settings.tensor_preprocess:
            raise UnsupportedModel(
                "fast_decode and tensor_preprocess change open_clip's image path; a transformers model "
                "is preprocessed as its own processor does"
            )
        self.spec = spec
        architecture = ARCHITECTURES[spec.arch]
        source = Path(str(settings.weights)).expanduser()
        cache = cache_dir(settings.cache_dir)
        texts = "text" in architecture.modalities

        def export(spec: ModelSpec, directory: Path, target: Path) -> Path:
            tokenizer = effective_tokenizer(directory, cache) if texts else None
            return export_fp32(spec, directory, target, tokenizer, architecture)

        path = backend_weights(
            spec, settings.backend, settings.device, settings.precision, source, cache, exporter=export
        )
        if settings.backend == "torch":
            from clipserve.backends.hf_clip import HfTorchBackend

            self.backend = HfTorchBackend(spec, path, settings.device, settings.precision)
            tokenizer_dir = effective_tokenizer(path, cache) if texts else None
        else:
            from clipserve.backends.onnx import HfOnnxBackend

            self.backend = HfOnnxBackend(
                spec, path, settings.device, settings.precision, spin, architecture.modalities
            )
            tokenizer_dir = path / TOKENIZER_DIR if texts else None
        enforce_cap(cache, settings.cache_max_gb, Path(str(self.backend.info()["weights"])))
        self.towers: dict[str, Tower] = {}
        if "text" in architecture.modalities:
            tokenizer = HfTokenizer(tokenizer_dir, spec.context_length, spec.tokenizer_clean)
            self.towers["text"] = text_tower(tokenizer, self.backend, spec, settings.max_text_chars)
        if "image" in architecture.modalities:
            processing = HfImagePreprocessor(
                HfImageSettings.from_config(json.loads(spec.hf_processor or "{}"))
            )
            limits = image_limits(settings)
            on_cpu = settings.device == "cpu"
            if architecture.images == "patches":
                self.towers["image"] = patch_tower(processing, self.backend, limits, on_cpu)
            else:
                self.towers["image"] = image_tower(processing, self.backend, spec, limits, on_cpu)

    def logit_scale(self, query: str, candidate: str) -> float:
        return self.backend.logit_scale

    def info(self) -> dict[str, object]:
        return {"family": self.spec.family, "class": self.spec.arch, **self.backend.info()}

    def close(self) -> None:
        pass


def effective_tokenizer(directory: Path, cache: Path) -> Path:
    """The model's tokenizer as transformers builds it, saved as files the ``tokenizers`` library
    reads alone (``tokenizer.json`` and its special tokens, padding and truncation sides).

    transformers 5 rebuilds a known class's tokenizer (``CLIPTokenizer``, ``Siglip2Tokenizer``…)
    from its vocabulary, with the class's own normaliser and padding side, rather than taking the
    directory's ``tokenizer.json`` as it is: what runs is what transformers runs. Made once per
    model content into the cache; exports keep a copy.
    """
    target = cache / "tokenizers" / "transformers" / fingerprint(directory, cache)
    if (target / "tokenizer.json").is_file():
        return target
    try:
        import transformers
    except ImportError as exc:
        raise WeightsUnavailable(
            f"reading the tokenizer of {directory} needs transformers once ({exc}): install "
            "`clipserve[torch]`, or pass the model's clipserve export"
        ) from exc
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
    if not tokenizer.is_fast:
        raise WeightsUnavailable(
            f"the tokenizer of {directory} ({type(tokenizer).__name__}) has no fast form (tokenizer.json); "
            "clipserve runs fast tokenizers only"
        )
    options = {
        "pad_token": tokenizer.pad_token,
        "sep_token": tokenizer.sep_token,
        "padding_side": tokenizer.padding_side,
        "truncation_side": tokenizer.truncation_side,
        "model_max_length": tokenizer.model_max_length,
    }
    with staged_dir(target) as staging:
        tokenizer.backend_tokenizer.save(str(staging / "tokenizer.json"))
        (staging / "tokenizer_config.json").write_text(json.dumps(options, indent=2) + "\n")
    return target


def export_fp32(
    spec: ModelSpec, directory: Path, target: Path, tokenizer_dir: Path | None, architecture: Architecture
) -> Path:
    """The ONNX export of a transformers model; explains when torch or transformers is missing."""
    try:
        from clipserve.backends.hf_clip import export_hf
    except ImportError as exc:
        raise WeightsUnavailable(
            f"{spec.name} needs an ONNX export, and exporting needs torch and transformers ({exc}). Install "
            "`clipserve[torch]` once, or pass an exported directory."
        ) from exc
    return export_hf(
        spec, directory, target, tokenizer_dir, architecture.modalities, architecture.images == "patches"
    )


def text_tower(tokenizer: HfTokenizer, backend, spec: ModelSpec, max_chars: int) -> Tower:
    """Token ids per text; a batch runs at its longest text where the tower allows it (exact), the
    attention mask marking the real tokens."""
    dynamic = spec.text_truncatable

    def prepare(item: Item) -> list[int]:
        return tokenizer.token_ids([check_text(item, max_chars)])[0]

    def run(batch: Sequence[list[int]]) -> np.ndarray:
        width = max(len(ids) for ids in batch) if dynamic else spec.context_length
        return backend.encode_text(*tokenizer.pad_with_mask(list(batch), width))

    return Tower("text", prepare, run, cost=len if dynamic else None, heavy=False)


def image_tower(
    processing: HfImagePreprocessor, backend, spec: ModelSpec, limits: ImageLimits, on_cpu: bool
) -> Tower:
    """Decoded, resized and cropped RGB per image (uint8), rescaled and normalised in the batch's
    finish step."""
    expected = (3, *spec.image_size)

    def prepare(item: Item) -> np.ndarray:
        if item.kind == "pixels":
            return check_pixels(item, expected, spec.name)
        with decoded_image(item.value, item.index, limits) as image:
            return processing.rgb(image)

    def run(batch: Sequence[np.ndarray]) -> np.ndarray:
        return backend.encode_image(np.stack(batch))

    max_batch = CPU_IMAGE_BATCH if on_cpu else None
    return Tower("image", prepare, run, max_batch=max_batch, finish=normalised(processing.normalise))


def patch_tower(processing: HfImagePreprocessor, backend, limits: ImageLimits, on_cpu: bool) -> Tower:
    """SigLIP 2 (NaFlex): each image resized to fit the patch budget and cut into patches (uint8),
    normalised in the batch's finish step; a batch is padded to the budget, with the patch mask and
    each image's grid."""
    budget = processing.settings.max_num_patches

    def prepare(item: Item) -> tuple[np.ndarray, tuple[int, int]]:
        if item.kind == "pixels":
            raise UnsupportedModel("a SigLIP 2 (NaFlex) model takes images, not preprocessed pixels")
        with decoded_image(item.value, item.index, limits) as image:
            return processing.patches(image)

    def finish(batch: Sequence[tuple[np.ndarray, tuple[int, int]]]) -> list:
        return [(processing.normalise_patches(patches), grid) for patches, grid in batch]

    def run(batch: Sequence[tuple[np.ndarray, tuple[int, int]]]) -> np.ndarray:
        width = batch[0][0].shape[1]
        pixels = np.zeros((len(batch), budget, width), np.float32)  # padding is zero, as transformers pads
        mask = np.zeros((len(batch), budget), np.int64)
        for row, (image_patches, _) in enumerate(batch):
            pixels[row, : len(image_patches)] = image_patches
            mask[row, : len(image_patches)] = 1
        shapes = np.asarray([grid for _, grid in batch], np.int64)
        return backend.encode_patches(pixels, mask, shapes)

    max_batch = CPU_IMAGE_BATCH if on_cpu else None
    return Tower("image", prepare, run, max_batch=max_batch, finish=finish)
