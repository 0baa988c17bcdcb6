"""The towers the families share: text through a tokenizer, and open_clip's image preprocessing
(exact, or as tensors on the model's device), with the checks every item passes first."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence

import numpy as np

from clipserve.backends.base import Backend
from clipserve.errors import InvalidInput, UnsupportedModel, echo
from clipserve.families.base import Tower
from clipserve.inputs import Item
from clipserve.preprocess.budget import process_budget
from clipserve.preprocess.image import (
    DECODE_OVERHEAD,
    DRAFT_MARGIN,
    ImageLimits,
    ImagePreprocessor,
    decoded_image,
)
from clipserve.preprocess.text import ClipTokenizer, HfTokenizer
from clipserve.settings import EngineSettings
from clipserve.zoo import ModelSpec

log = logging.getLogger(__name__)

CPU_IMAGE_BATCH = 8
"""Images per model call on a CPU. ViT-B-32 (ONNX Runtime, 2-core Xeon with AMX) ran images/s:
fp32 33.3 at batch 8, 31.4 at 16, 30.8 at 32; int8 108.8, 111.3, 90.1. Batch 8 keeps the activation
memory small (int8 server peak under 64 clients 390 MiB at 8, 448 at 16, 680 at 32). GPUs keep
``batch_size``: they need large batches."""

TENSOR_DECODE_BYTES = 4
"""Host bytes per pixel of torchvision's decode and resize of a JPEG (3.2 measured at 7000 x 7000)."""

Tokenizer = ClipTokenizer | HfTokenizer


def check_text(item: Item, max_chars: int) -> str:
    """The item's text, or :class:`InvalidInput` when it is not a string or is too long."""
    if not isinstance(item.value, str):
        raise InvalidInput(f"text must be a string, got {type(item.value).__name__}", item.index)
    if len(item.value) > max_chars:
        raise InvalidInput(
            f"text of {len(item.value)} characters exceeds the limit of {max_chars}", item.index
        )
    return item.value


def text_tower(tokenizer: Tokenizer, backend: Backend, max_chars: int) -> Tower:
    """Token ids per text; batches run to their longest text where the tower allows it (exact)."""

    def prepare(item: Item) -> list[int]:
        return tokenizer.token_ids([check_text(item, max_chars)])[0]

    def run(batch: Sequence[list[int]]) -> np.ndarray:
        width = max(len(ids) for ids in batch) if backend.text_dynamic_length else None
        return backend.encode_text(tokenizer.pad(list(batch), width))

    return Tower("text", prepare, run, cost=len if backend.text_dynamic_length else None, heavy=False)


def image_tower(spec: ModelSpec, backend: Backend, settings: EngineSettings) -> Tower:
    """Decoded, resized and cropped RGB per image (uint8), normalised to float32 in the batch's
    finish step (off the server's inference thread): exact to open_clip's transform (or, with
    ``tensor_preprocess``, as tensors on the model's device)."""
    if settings.tensor_preprocess:
        return tensor_image_tower(spec, backend, settings)
    preprocess = ImagePreprocessor(spec)
    limits = image_limits(settings)
    expected_shape = (3, *spec.image_size)
    draft_edge = DRAFT_MARGIN * min(spec.image_size) if settings.fast_decode else None

    def prepare(item: Item) -> np.ndarray:
        if item.kind == "pixels":
            return check_pixels(item, expected_shape, spec.name)
        return exact_rgb(item, preprocess, limits, draft_edge)

    def run(batch: Sequence[np.ndarray]) -> np.ndarray:
        return backend.encode_image(np.stack(batch))

    max_batch = CPU_IMAGE_BATCH if settings.device == "cpu" else None
    return Tower("image", prepare, run, max_batch=max_batch, finish=normalised(preprocess.normalise))


def normalised(normalise: Callable[[np.ndarray], np.ndarray]) -> Callable[[Sequence[np.ndarray]], list]:
    """A finish step that normalises the uint8 RGB payloads of a batch (preprocessed float pixels
    pass as they are)."""

    def finish(batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [normalise(pixels) if pixels.dtype == np.uint8 else pixels for pixels in batch]

    return finish


def tensor_image_tower(spec: ModelSpec, backend: Backend, settings: EngineSettings) -> Tower:
    """Baseline colour JPEGs decoded and preprocessed as tensors on the model's device, the other
    images on the exact path; see :mod:`clipserve.preprocess.tensor_image`."""
    if not hasattr(backend, "encode_image_tensor"):
        raise UnsupportedModel(f"tensor_preprocess does not run on the {settings.backend} backend")
    if settings.fast_decode:
        raise UnsupportedModel("fast_decode applies to the exact path; tensor_preprocess decodes otherwise")
    try:
        from clipserve.preprocess.tensor_image import TensorImagePreprocessor, takes
    except ImportError as exc:
        raise UnsupportedModel(
            f"tensor_preprocess needs torch and torchvision ({exc}); install clipserve[torch]"
        ) from exc

    exact = ImagePreprocessor(spec)
    tensors = TensorImagePreprocessor(
        spec.image_size, spec.resize_mode, spec.interpolation, spec.mean, spec.std, backend.tensor_device
    )
    limits = image_limits(settings)
    expected_shape = (3, *spec.image_size)
    how = "a batch per call" if tensors.batch_decode else "one per decode thread"
    log.info("tensor image preprocessing on %s: JPEGs decoded %s", tensors.device, how)

    def prepare(item: Item):
        if item.kind == "pixels":
            return check_pixels(item, expected_shape, spec.name)
        if item.kind == "path":  # read once, for whichever path takes it
            with contextlib.suppress(OSError):  # unreadable: the exact path words the error
                item = Item(item.index, item.modality, "bytes", item.value.read_bytes())
        if item.kind == "bytes" and (pixels := takes(item.value, limits, item.index)):
            if tensors.batch_decode:  # decoded with its batch, in device memory
                return tensors.prepare(item.value, item.index)
            with limits.budget.reserve(TENSOR_DECODE_BYTES * pixels + DECODE_OVERHEAD, item.index):
                return tensors.prepare(item.value, item.index)
        return exact_rgb(item, exact, limits, None)

    def run(batch: Sequence) -> np.ndarray:
        return backend.encode_image_tensor(tensors.batch(list(batch)))

    max_batch = CPU_IMAGE_BATCH if settings.device == "cpu" else None
    finish = tensors.decode_batch if tensors.batch_decode else None
    return Tower("image", prepare, run, max_batch=max_batch, finish=finish)


def image_limits(settings: EngineSettings) -> ImageLimits:
    """The image limits of ``settings``, with the process's decode budget (Pillow's own pixel
    limit raised to them)."""
    limits = ImageLimits(
        settings.max_pixels,
        settings.max_aspect_ratio,
        settings.max_decode_s,
        process_budget(settings.max_decode_mb),
    )
    limits.allow_in_pillow()
    return limits


def exact_rgb(
    item: Item, preprocess: ImagePreprocessor, limits: ImageLimits, draft_edge: int | None
) -> np.ndarray:
    """The exact path of one image: decoded (guarded), resized and cropped uint8 ``[3, H, W]``,
    within the decode budget."""
    with decoded_image(item.value, item.index, limits, draft_edge) as image:
        try:
            return preprocess.rgb(image)
        except Exception as exc:  # resampling or mode conversion of a hostile image
            raise InvalidInput(
                f"cannot preprocess image of mode {image.mode}: {type(exc).__name__}: {echo(str(exc))}",
                item.index,
            ) from exc


def check_pixels(item: Item, expected: tuple[int, ...], model: str) -> np.ndarray:
    """Already-preprocessed pixels of the model's input shape, finite."""
    if item.value.shape != expected:
        raise InvalidInput(
            f"preprocessed pixels must have shape {list(expected)} for {model}, got {list(item.value.shape)}",
            item.index,
        )
    pixels = np.asarray(item.value, dtype=np.float32)
    if not np.isfinite(pixels).all():
        raise InvalidInput("preprocessed pixels contain NaN or infinity", item.index)
    return pixels
