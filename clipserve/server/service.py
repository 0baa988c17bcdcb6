"""The request-facing operations over one Encoder: parse inputs, preprocess, batch dynamically."""

from __future__ import annotations

import asyncio
import base64
import binascii
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from clipserve.batching import DynamicBatcher
from clipserve.encoder import Encoder
from clipserve.errors import InvalidInput, RequestTooLarge, UnknownModel
from clipserve.inputs import Item, decode_data_uri
from clipserve.server.metrics import Metrics
from clipserve.server.settings import ServerSettings
from clipserve.zoo import get_spec

INLINE_TEXT_CHARS = 2048


class EncodingService:
    """Turns request inputs into vectors; concurrent requests share model calls per modality."""

    def __init__(self, encoder: Encoder, settings: ServerSettings) -> None:
        self.encoder, self.settings = encoder, settings
        self.metrics = Metrics(encoder.info())
        self._inference = ThreadPoolExecutor(1, thread_name_prefix="clipserve-infer")
        self.batchers = {
            modality: DynamicBatcher(
                run,
                self._inference,
                max_batch_size=settings.max_batch_size,
                max_wait_ms=settings.max_wait_ms,
                max_queue=settings.max_queue,
                on_batch=lambda size, modality=modality: self.metrics.batch(modality, size),
            )
            for modality, run in (("text", encoder.embed_token_ids), ("image", encoder.embed_pixels))
        }
        for modality, batcher in self.batchers.items():
            self.metrics.watch_queue(modality, lambda batcher=batcher: batcher.depth)

    async def close(self) -> None:
        for batcher in self.batchers.values():
            await batcher.close()
        self._inference.shutdown(wait=True)
        self.encoder.close()

    def serves(self, name: str) -> bool:
        """True when ``name`` resolves to the served model."""
        try:
            return get_spec(name).name == self.encoder.spec.name
        except UnknownModel:
            return False

    def check_count(self, count: int) -> None:
        if count > self.settings.max_items:
            raise RequestTooLarge(f"{count} items in one request; the limit is {self.settings.max_items}")

    def image_item(self, index: int, value: str) -> Item:
        """An image given as a data URI, an http(s) URL (when allowed) or plain base64."""
        if value.startswith("data:"):
            return Item(index, "image", "bytes", decode_data_uri(value, index))
        if value.startswith(("http://", "https://")):
            if not self.settings.allow_url:
                raise InvalidInput(
                    "URL inputs are disabled on this server (start it with --allow-url)", index
                )
            return Item(index, "image", "url", value)
        try:
            # whitespace is allowed: `base64` wraps its output at 76 columns by default
            return Item(index, "image", "bytes", base64.b64decode("".join(value.split()), validate=True))
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput(f"image is neither a data URI, a URL nor valid base64: {exc}", index) from exc

    async def embed(self, items: list[Item]) -> tuple[np.ndarray, int]:
        """Vectors for ``items`` in order, and the number of text tokens they used.

        Raises the :class:`InvalidInput` of the lowest-indexed bad item; nothing of a request with a
        bad item reaches the model. Callers check the item count (:meth:`check_count`) before
        building items, so an oversized request costs no decoding.
        """
        loop = asyncio.get_running_loop()
        pool = self.encoder.preprocess_pool
        texts = [item for item in items if item.modality == "text"]
        images = [item for item in items if item.modality == "image"]
        # A few short texts tokenise faster than a hop to a worker thread and back.
        short = sum(len(item.value) for item in texts) <= INLINE_TEXT_CHARS
        tokens = (
            _run_inline(self._token_ids, texts)
            if short
            else loop.run_in_executor(pool, self._token_ids, texts)
        )
        prepared = await asyncio.gather(
            tokens,
            *(loop.run_in_executor(pool, self.encoder.prepare_image, item) for item in images),
            return_exceptions=True,
        )
        failures = [r for r in prepared if isinstance(r, BaseException)]
        if failures:
            invalid = [f for f in failures if isinstance(f, InvalidInput)]
            if len(invalid) < len(failures):
                raise next(f for f in failures if not isinstance(f, InvalidInput))
            raise min(invalid, key=lambda e: e.index if e.index is not None else -1)
        token_ids, pixels = prepared[0], prepared[1:]
        text_rows, image_rows = await asyncio.gather(
            self.batchers["text"].submit(token_ids) if token_ids else _nothing(),
            self.batchers["image"].submit(pixels) if pixels else _nothing(),
        )
        vectors = np.empty((len(items), self.encoder.dim), dtype=np.float32)
        for item, row in zip(texts, text_rows, strict=True):
            vectors[item.index] = row
        for item, row in zip(images, image_rows, strict=True):
            vectors[item.index] = row
        return vectors, sum(len(ids) for ids in token_ids)

    def _token_ids(self, texts: list[Item]) -> list[list[int]]:
        token_ids, _, errors = self.encoder.tokenize(texts)
        if errors:
            raise errors[0]
        return token_ids


async def _nothing() -> list:
    return []


async def _run_inline(function, *args):
    return function(*args)
