"""The request-facing operations over one model's Encoder: admit, prepare, batch dynamically, embed.

The steps are the library's own (:class:`clipserve.pipeline.Pipeline`); only their scheduling
differs: URL fetches run on the fetch pool, decoding on the preparation pool, and prepared items
of concurrent requests share model calls through one :class:`DynamicBatcher` per modality.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from clipserve.batching import DynamicBatcher
from clipserve.encoder import Encoder
from clipserve.errors import InvalidInput, Overloaded, RequestTooLarge
from clipserve.fetch import ByteBudget
from clipserve.inputs import Item
from clipserve.server.metrics import ModelMetrics
from clipserve.settings import ServerSettings

INLINE_TEXT_CHARS = 2048
"""Light items (texts) of a request with at most this many characters are prepared on the event
loop: faster than a hop to a worker thread and back."""


class EncodingService:
    """Turns request items into vectors; concurrent requests share model calls per modality."""

    def __init__(self, encoder: Encoder, settings: ServerSettings, metrics: ModelMetrics) -> None:
        self.encoder, self.settings, self.metrics = encoder, settings, metrics
        self.pipeline = encoder.pipeline
        self._inference = ThreadPoolExecutor(1, thread_name_prefix="clipserve-infer")
        # Its own thread: a batch's finish step must not queue behind the decodes of later items.
        self._finishing = ThreadPoolExecutor(1, thread_name_prefix="clipserve-finish")
        towers = self.pipeline.model.towers
        self._inflight_items = 0
        self.batchers = {
            modality: DynamicBatcher(
                lambda finished, modality=modality: self._run_batch(modality, finished),
                self._inference,
                max_batch_size=self.pipeline.batch_size(modality),
                max_wait_ms=settings.max_wait_ms,
                max_queue=settings.max_queue,
                on_batch=lambda size, modality=modality: self.metrics.batch(modality, size),
                cost=towers[modality].cost,
                finish=None if towers[modality].finish is None else self._finisher(modality),
                finish_executor=self._finishing,
            )
            for modality in self.pipeline.modalities
        }
        for modality, batcher in self.batchers.items():
            self.metrics.watch_queue(modality, lambda batcher=batcher: batcher.depth)

    def _finisher(self, modality: str) -> Callable[[list], list]:
        return lambda batch: self.pipeline.finish_batch(modality, batch)

    def _run_batch(self, modality: str, finished: list) -> list:
        """One model call (on the inference thread, which does nothing else): a row per payload,
        or the error of an item that failed in the batch's finish step."""
        rows, errors = self.pipeline.embed_finished(modality, finished)
        return [errors.get(position, row) for position, row in enumerate(rows)]

    async def close(self) -> None:
        for batcher in self.batchers.values():
            await batcher.close()
        self._inference.shutdown(wait=True)
        self._finishing.shutdown(wait=True)
        self.encoder.close()

    def check_request(self, items: list[Item]) -> None:
        """Refuse a request over the item or URL count limits before any work (413)."""
        if len(items) > self.settings.max_items:
            raise RequestTooLarge(
                f"{len(items)} items in one request; the limit is {self.settings.max_items}"
            )
        urls = [item for item in items if item.kind == "url"]
        if len(urls) > self.settings.max_urls:
            raise RequestTooLarge(
                f"{len(urls)} URL items in one request; the limit is {self.settings.max_urls}", urls[-1].index
            )

    def admit(self, items: list[Item]) -> int:
        """The request's weight in the in-flight limit, once it is known to fit: 413 for a request
        heavier than the limit by itself, 503 when the work in flight or a queue it needs is full
        (checked before anything is prepared, so a refused request costs nothing)."""
        towers = self.pipeline.model.towers
        weight = sum(towers[item.modality].weight if item.modality in towers else 1 for item in items)
        limit = self.settings.max_inflight_items
        if weight > limit:
            heavy = {m: t.weight for m, t in towers.items() if t.weight > 1}
            counts = "".join(f"; an {m} item counts as {w}" for m, w in heavy.items())
            raise RequestTooLarge(
                f"the request weighs {weight} items (max_inflight_items is {limit}{counts})"
            )
        if self._inflight_items and self._inflight_items + weight > limit:
            raise Overloaded(f"{self._inflight_items} items are being handled; retry later")
        for modality, count in Counter(item.modality for item in items).items():
            if modality in self.batchers:
                self.batchers[modality].check_room(count)
        return weight

    async def embed(self, items: list[Item]) -> tuple[np.ndarray, list[int]]:
        """Vectors for ``items`` in order, and the text tokens each used (0 for media; a text
        truncated to the context length counts the context length).

        Raises the :class:`InvalidInput` of the lowest-indexed bad item: nothing of a request with
        an item found bad while preparing reaches the model. (The GPU image path finds a corrupt
        JPEG only when its batch is decoded; the request's other items are embedded by then.)
        """
        self.check_request(items)
        weight = self.admit(items)
        self._inflight_items += weight
        try:
            plan = self.pipeline.plan(items)
            if self.pipeline.text_cache is not None:
                texts = sum(1 for item in items if item.kind == "text")
                self.metrics.text_cache(hits=plan.cache_hits, misses=texts - plan.cache_hits)
            missing = sorted(p for positions in plan.pending.values() for p in positions)
            prepared = await self._prepare([items[p] for p in missing], plan.errors)
            payloads = dict(zip(missing, prepared, strict=True))
            results = await asyncio.gather(
                *(
                    self.batchers[modality].submit([payloads[p] for p in positions])
                    for modality, positions in plan.pending.items()
                ),
                return_exceptions=True,
            )
        finally:
            self._inflight_items -= weight
        if failures := [r for r in results if isinstance(r, BaseException)]:
            raise first_error(failures)
        for positions, rows in zip(plan.pending.values(), results, strict=True):
            plan.vectors[positions] = np.asarray(rows)
        embedded_texts = [(p, payloads[p]) for p in plan.pending.get("text", [])]
        self.pipeline.settle_texts(plan, items, embedded_texts)
        return plan.vectors, plan.tokens

    async def _prepare(self, items: list[Item], known: list[InvalidInput]) -> list:
        """The payloads of ``items``; raises the lowest-indexed error among theirs and ``known``."""
        loop = asyncio.get_running_loop()
        pipeline = self.pipeline
        budget = ByteBudget(self.settings.max_request_fetch_bytes)

        light_chars = sum(len(item.value) for item in items if item.kind == "text")
        inline = light_chars <= INLINE_TEXT_CHARS

        async def fetched(item: Item) -> Item:
            if item.kind != "url":
                return item
            return await loop.run_in_executor(pipeline.fetch_pool, pipeline.resolve, item, budget)

        async def prepared(item: Item):
            item = await fetched(item)
            tower = pipeline.tower(item)
            if not tower.heavy and inline:
                return pipeline.prepare(item)
            return await loop.run_in_executor(pipeline.prepare_pool, pipeline.prepare, item)

        outcomes = await asyncio.gather(*(prepared(item) for item in items), return_exceptions=True)
        if failures := [*known, *(o for o in outcomes if isinstance(o, BaseException))]:
            raise first_error(failures)
        return outcomes


def first_error(failures: list[BaseException]) -> BaseException:
    """The error a request answers with: an unexpected one first, else the lowest-indexed item's."""
    expected = [f for f in failures if isinstance(f, InvalidInput | RequestTooLarge)]
    if len(expected) < len(failures):
        return next(f for f in failures if not isinstance(f, InvalidInput | RequestTooLarge))
    return min(expected, key=lambda e: e.index if e.index is not None else -1)
