"""The public entry point: :class:`Encoder` turns texts and images into L2-normalised vectors."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from clipserve.backends.factory import create_backend
from clipserve.batching import by_cost, chunks, prefetched
from clipserve.errors import InvalidInput
from clipserve.fetch import fetch_url
from clipserve.inputs import Item, to_item, to_items
from clipserve.preprocess.image import DEFAULT_MAX_PIXELS, ImagePreprocessor, decode_image
from clipserve.preprocess.text import ClipTokenizer
from clipserve.weights import cache_dir as resolve_cache_dir
from clipserve.zoo import DEFAULT_MODEL, get_spec

DEFAULT_MAX_TEXT_CHARS = 65_536


@dataclass(frozen=True)
class RankedMatch:
    """One candidate of :meth:`Encoder.rank`, best first."""

    index: int
    """Position of the candidate in the list given to ``rank``."""
    clip_score: float
    """Softmax over the candidates of ``logit_scale × cosine`` (sums to 1 over all candidates)."""
    cosine: float
    candidate: Any


@dataclass(frozen=True)
class EncodeResult:
    """What :meth:`Encoder.encode_lenient` returns: vectors of the good items, errors of the bad."""

    vectors: np.ndarray
    """float32 ``[len(indices), dim]``."""
    indices: list[int]
    """Input positions of the rows of ``vectors``."""
    errors: list[InvalidInput]
    """One per skipped input, ``error.index`` naming it."""


class Encoder:
    """Embeds texts and images into one CLIP latent space.

    Args:
        model: a zoo name, ``ARCH::TAG`` (``clipserve models`` lists them).
        backend: ``onnx`` (ONNX Runtime; no torch needed once exported) or ``torch`` (open_clip).
        device: ``cpu``, ``cuda[:N]``, or ``tensorrt[:N]`` (onnx). Never silently replaced.
        weights: a local checkpoint file or an exported ONNX directory; else cache, then download.
        batch_size: items per model call.
        num_workers: threads decoding and resizing images, overlapped with inference.
        precision: ``fp32``; ``fp16`` with torch on CUDA.
        cache_dir: where downloads and exports live (default ``$CLIPSERVE_CACHE`` or
            ``~/.cache/clipserve``).
        allow_url: treat ``http(s)://`` strings as image URLs to fetch (otherwise they are text).
        allow_private_urls: also fetch from loopback, private, link-local and cloud-metadata
            addresses (refused by default, also after DNS resolution and on redirects).
        max_pixels: images with more pixels are refused (decompression bombs).
        max_text_chars: longer texts are refused.
        spin: let idle inference threads busy-wait between small text kernels (onnx): faster
            offline, wasteful where other work shares the cores (the server turns it off).
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        backend: str = "onnx",
        device: str = "cpu",
        weights: str | os.PathLike[str] | None = None,
        batch_size: int = 32,
        num_workers: int | None = None,
        precision: str = "fp32",
        cache_dir: str | os.PathLike[str] | None = None,
        allow_url: bool = False,
        allow_private_urls: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
        spin: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.spec = get_spec(model)
        self.backend = create_backend(
            self.spec, backend, device, weights, precision, resolve_cache_dir(cache_dir), spin
        )
        self.batch_size = batch_size
        self.allow_url = allow_url
        self.allow_private_urls = allow_private_urls
        self.max_pixels = max_pixels
        self.max_text_chars = max_text_chars
        self.tokenizer = ClipTokenizer(self.spec.context_length)
        self.image_preprocessor = ImagePreprocessor(self.spec)
        self.preprocess_pool = ThreadPoolExecutor(
            num_workers or os.cpu_count() or 1, thread_name_prefix="clipserve-pre"
        )

    @property
    def dim(self) -> int:
        """Dimension of the vectors."""
        return self.spec.dim

    @property
    def logit_scale(self) -> float:
        return self.backend.logit_scale

    def info(self) -> dict[str, object]:
        """Model, dimension and what really runs (backend, device, providers, precision, weights)."""
        return {"model": self.spec.name, "dim": self.dim, **self.backend.info()}

    def close(self) -> None:
        """Stop the preprocessing threads."""
        self.preprocess_pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Encoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- encoding ---------------------------------------------------------------------------------

    def encode(self, inputs: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Embed a list of texts and/or images (modality detected per item), in input order.

        Returns:
            float32 ``[len(inputs), dim]``, each row L2-normalised.

        Raises:
            InvalidInput: an item cannot be encoded; ``error.index`` names it.
        """
        items = to_items(_as_list(inputs), self.allow_url)
        vectors, errors = self._encode_items(items, stop_on_error=True)
        if errors:
            raise errors[0]
        return vectors

    def encode_lenient(self, inputs: Sequence[Any] | np.ndarray) -> EncodeResult:
        """Like :meth:`encode`, but skips bad items and reports them instead of raising."""
        items, errors = [], []
        for index, value in enumerate(_as_list(inputs)):
            try:
                items.append(to_item(index, value, self.allow_url))
            except InvalidInput as exc:
                errors.append(exc)
        vectors, failed = self._encode_items(items, stop_on_error=False)
        bad = {e.index for e in failed}
        keep = [row for row, item in enumerate(items) if item.index not in bad]
        return EncodeResult(
            vectors=vectors[keep],
            indices=[items[row].index for row in keep],
            errors=sorted(errors + failed, key=lambda e: e.index or 0),
        )

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts (every string is text here, even one naming a file)."""
        texts = _as_list(texts)
        items = [Item(i, "text", "text", _require_str(t, i)) for i, t in enumerate(texts)]
        vectors, errors = self._encode_items(items, stop_on_error=True)
        if errors:
            raise errors[0]
        return vectors

    def encode_image(self, images: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Embed images: paths, bytes, data URIs, PIL images, uint8 arrays, or preprocessed
        float arrays (``[3, H, W]`` each, or one ``[N, 3, H, W]`` array)."""
        items = to_items(_as_list(images), self.allow_url)
        for item in items:
            if item.modality != "image":
                raise InvalidInput(
                    "not an image: a string that is neither a file, a data URI nor a URL", item.index
                )
        vectors, errors = self._encode_items(items, stop_on_error=True)
        if errors:
            raise errors[0]
        return vectors

    def rank(self, query: Any, candidates: Sequence[Any]) -> list[RankedMatch]:
        """Rank ``candidates`` by similarity to ``query`` (image→texts, text→images, …), best first.

        ``clip_score`` is the softmax over the candidates of ``logit_scale × cosine``, as in
        clip-as-service's ``/rank``.
        """
        candidates = _as_list(candidates)
        if not candidates:
            raise InvalidInput("rank needs at least one candidate")
        vectors = self.encode([query, *candidates])
        order, scores, cosines = clip_scores(vectors[0], vectors[1:], self.logit_scale)
        return [RankedMatch(int(i), float(scores[i]), float(cosines[i]), candidates[i]) for i in order]

    # -- building blocks (shared with the server's dynamic batcher) ----------------------------------

    def tokenize(self, texts: Sequence[Item]) -> tuple[list[list[int]], list[int], list[InvalidInput]]:
        """Token ids of the text items within the length limit, their positions in ``texts``, and
        an :class:`InvalidInput` for each item over it."""
        kept, values, errors = [], [], []
        for position, item in enumerate(texts):
            if len(item.value) > self.max_text_chars:
                errors.append(
                    InvalidInput(
                        f"text of {len(item.value)} characters exceeds the limit of {self.max_text_chars}",
                        item.index,
                    )
                )
            else:
                kept.append(position)
                values.append(item.value)
        return self.tokenizer.token_ids(values), kept, errors

    def prepare_image(self, item: Item) -> np.ndarray:
        """Decode (or fetch) and preprocess one image item into float32 ``[3, H, W]``."""
        if item.kind == "pixels":
            return self._check_pixels(item)
        source = (
            fetch_url(item.value, item.index, self.allow_private_urls) if item.kind == "url" else item.value
        )
        image = decode_image(source, item.index, self.max_pixels)
        try:
            return self.image_preprocessor(image)
        except (OSError, ValueError) as exc:
            raise InvalidInput(
                f"cannot convert image of mode {image.mode} to RGB: {exc}", item.index
            ) from exc

    def embed_token_ids(self, ids: Sequence[list[int]]) -> np.ndarray:
        """One model call on token id sequences (cut to the longest where exact) → normalised rows."""
        width = max(len(seq) for seq in ids) if self.backend.text_dynamic_length else None
        return _normalise(self.backend.encode_text(self.tokenizer.pad(list(ids), width)))

    def embed_pixels(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """One model call on preprocessed images → normalised rows."""
        return _normalise(self.backend.encode_image(np.stack(pixels)))

    # -- internals --------------------------------------------------------------------------------

    def _encode_items(self, items: list[Item], stop_on_error: bool) -> tuple[np.ndarray, list[InvalidInput]]:
        vectors = np.zeros((len(items), self.dim), dtype=np.float32)
        errors: list[InvalidInput] = []
        self._encode_texts(
            [(row, item) for row, item in enumerate(items) if item.modality == "text"], vectors, errors
        )
        if errors and stop_on_error:
            return vectors, errors
        images = [(row, item) for row, item in enumerate(items) if item.modality == "image"]
        self._encode_images(images, vectors, errors, stop_on_error)
        return vectors, errors

    def _encode_texts(
        self, texts: list[tuple[int, Item]], out: np.ndarray, errors: list[InvalidInput]
    ) -> None:
        token_ids, kept, failed = self.tokenize([item for _, item in texts])
        errors.extend(failed)
        rows = [texts[position][0] for position in kept]
        if self.backend.text_dynamic_length:  # similar lengths together: little padding, same vectors
            batches = by_cost([len(ids) for ids in token_ids], self.batch_size)
        else:
            batches = chunks(range(len(rows)), self.batch_size)
        for batch in batches:
            out[[rows[p] for p in batch]] = self.embed_token_ids([token_ids[p] for p in batch])

    def _encode_images(
        self, images: list[tuple[int, Item]], out: np.ndarray, errors: list[InvalidInput], stop_on_error: bool
    ) -> None:
        def prepare(entry: tuple[int, Item]) -> np.ndarray:
            return self.prepare_image(entry[1])

        for batch, prepared in prefetched(chunks(images, self.batch_size), prepare, self.preprocess_pool):
            ok = []
            for (row, _), result in zip(batch, prepared, strict=True):
                if isinstance(result, InvalidInput):
                    errors.append(result)
                elif isinstance(result, Exception):
                    raise result
                else:
                    ok.append((row, result))
            if errors and stop_on_error:
                return
            if ok:
                out[[row for row, _ in ok]] = self.embed_pixels([pixels for _, pixels in ok])

    def _check_pixels(self, item: Item) -> np.ndarray:
        expected = (3, *self.spec.image_size)
        if item.value.shape != expected:
            raise InvalidInput(
                f"preprocessed pixels must have shape {list(expected)} for {self.spec.name}, "
                f"got {list(item.value.shape)}",
                item.index,
            )
        pixels = np.asarray(item.value, dtype=np.float32)
        if not np.isfinite(pixels).all():
            raise InvalidInput("preprocessed pixels contain NaN or infinity", item.index)
        return pixels


def clip_scores(query: np.ndarray, candidates: np.ndarray, logit_scale: float):
    """``(order best first, clip_score, cosine)``: softmax over candidates of ``logit_scale × cosine``."""
    cosines = candidates @ query
    logits = logit_scale * cosines.astype(np.float64)
    scores = np.exp(logits - logits.max())
    scores /= scores.sum()
    return np.argsort(-scores, kind="stable"), scores, cosines


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, np.finfo(np.float32).tiny)).astype(np.float32, copy=False)


def _as_list(inputs: Any) -> list[Any]:
    if hasattr(inputs, "detach") and hasattr(inputs, "numpy"):  # a torch tensor
        inputs = inputs.detach().cpu().numpy()
    if isinstance(inputs, np.ndarray):
        if inputs.ndim != 4:
            raise InvalidInput(
                f"an array of inputs must be a batch of preprocessed images [N, 3, H, W], got "
                f"{list(inputs.shape)}; pass single images inside a list"
            )
        return list(inputs)
    if isinstance(inputs, str | bytes) or not isinstance(inputs, Sequence):
        raise InvalidInput(
            f"expected a list of inputs, got a single {type(inputs).__name__}; wrap it in a list"
        )
    return list(inputs)


def _require_str(value: Any, index: int) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"encode_text takes strings, got {type(value).__name__}", index)
    return value
