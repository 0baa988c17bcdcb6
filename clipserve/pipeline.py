"""The one encode pipeline: items → prepared payloads per modality → batches → normalised vectors.

Every face runs these steps. :meth:`Pipeline.encode` runs them synchronously for the library and
the CLI (preparation of later batches overlapped with inference); the server runs the same
:meth:`~Pipeline.resolve`, :meth:`~Pipeline.prepare`, :meth:`~Pipeline.finish_batch` and
:meth:`~Pipeline.embed_finished` through its dynamic batchers (its inference thread runs only the
last). The error rule is shared too: the error reported is that of the lowest-indexed
bad item, and every item before it was prepared without error.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clipserve.batching import by_cost, chunks, prefetched
from clipserve.errors import InvalidInput
from clipserve.families.base import Model, Tower
from clipserve.families.probe import sample_item
from clipserve.fetch import ByteBudget, fetch_pool, fetch_url
from clipserve.inputs import Item, decode_base64, decode_data_uri
from clipserve.resources import available_cpus
from clipserve.settings import EngineSettings
from clipserve.text_cache import TextCache
from clipserve.vectors import normalise

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """Where the items of one call go, before any work: the rows of texts found in the text cache
    are filled, the other items wait by modality (positions in input order), and an item of a
    modality the model lacks is an error at once."""

    vectors: np.ndarray
    tokens: list[int]
    """Text tokens per item (0 for media), as ``/v1/embeddings`` reports usage."""
    pending: dict[str, list[int]] = field(default_factory=dict)
    errors: list[InvalidInput] = field(default_factory=list)
    cache_hits: int = 0


class Pipeline:
    """Runs items through one model's towers; owns the preparation thread pool (URL fetches run on
    the process's one fetch pool, shared by every model)."""

    def __init__(self, model: Model, settings: EngineSettings) -> None:
        self.model = model
        self.settings = settings
        self.dim = model.spec.dim
        workers = settings.num_workers or available_cpus()
        self.prepare_pool = ThreadPoolExecutor(workers, thread_name_prefix="clipserve-prepare")
        self.fetch_pool = fetch_pool()
        self.text_cache = TextCache(settings.text_cache) if settings.text_cache else None

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.model.towers)

    def close(self) -> None:
        self.prepare_pool.shutdown(wait=True, cancel_futures=True)
        self.model.close()

    def warm_up(self) -> float:
        """Run one batch of the largest size this pipeline runs through each tower, so that the
        first request does not pay for the engine's first run (ONNX Runtime's memory arena and
        kernel set-up, torch's first dispatch); returns the seconds it took. The batch bypasses
        :meth:`encode`: nothing reaches the text cache or a server's batch metrics."""
        started = time.perf_counter()
        for modality in self.modalities:
            try:
                payload = self.prepare(sample_item(modality))
            except InvalidInput as exc:  # limits tighter than a small sample: the model loads unwarmed
                log.warning(
                    "%s is not warmed up: its limits refuse the sample %s (%s)", modality, modality, exc
                )
                continue
            self.run_batch(modality, [payload] * self.batch_size(modality))
        took = time.perf_counter() - started
        log.info("warmed up %s (%s) in %.2f s", self.model.spec.name, ", ".join(self.modalities), took)
        return took

    # -- steps (shared by every face) ---------------------------------------------------------------

    def tower(self, item: Item) -> Tower:
        """The tower of the item's modality, or :class:`InvalidInput` when the model has none."""
        tower = self.model.towers.get(item.modality)
        if tower is None:
            raise InvalidInput(
                f"{self.model.spec.name} does not embed {item.modality} "
                f"(it embeds {', '.join(self.model.towers)})",
                item.index,
            )
        return tower

    def resolve(self, item: Item, budget: ByteBudget | None = None) -> Item:
        """The item with a URL fetched and base64 or a data URI decoded into bytes (on a worker)."""
        if item.kind == "url":
            if not self.settings.allow_url:
                raise InvalidInput("URL inputs are not allowed (allow_url)", item.index)
            data = fetch_url(
                item.value,
                item.index,
                self.settings.allow_private_urls,
                self.settings.fetch_timeout_s,
                self.settings.max_fetch_bytes,
                budget,
            )
        elif item.kind == "base64":
            problem = f"the {item.modality} is neither a data URI, a URL nor valid base64"
            data = decode_base64(item.value, item.index, problem)
        elif item.kind == "data_uri":
            data = decode_data_uri(item.value, item.index)
        else:
            return item
        return Item(item.index, item.modality, "bytes", data)

    def prepare(self, item: Item, budget: ByteBudget | None = None) -> Any:
        """Resolve the item's source and prepare it for its tower (on a worker for heavy towers)."""
        resolved = self.resolve(item, budget)
        return self.tower(resolved).prepare(resolved)

    def batch_size(self, modality: str) -> int:
        """Most items of ``modality`` in one model call: the setting, capped by the tower."""
        cap = self.model.towers[modality].max_batch
        return min(self.settings.batch_size, cap) if cap else self.settings.batch_size

    def run_batch(self, modality: str, payloads: Sequence[Any]) -> tuple[np.ndarray, dict[int, InvalidInput]]:
        """One model call on prepared payloads of one modality → L2-normalised float32 rows, and
        the errors, by position, of the items that failed in the tower's ``finish`` (their rows
        are zeros, not vectors): :meth:`finish_batch`, then :meth:`embed_finished`."""
        return self.embed_finished(modality, self.finish_batch(modality, payloads))

    def finish_batch(self, modality: str, payloads: Sequence[Any]) -> list[Any]:
        """The batch's step before the model (the tower's ``finish``): per payload, what the
        model takes, or the :class:`InvalidInput` of an item that failed there. The server runs
        it off the inference thread."""
        finish = self.model.towers[modality].finish
        return list(payloads) if finish is None else finish(payloads)

    def embed_finished(
        self, modality: str, finished: Sequence[Any]
    ) -> tuple[np.ndarray, dict[int, InvalidInput]]:
        """The model call on a finished batch: rows for its payloads, zeros and the error, by
        position, for its failed items."""
        tower = self.model.towers[modality]
        errors = {p: f for p, f in enumerate(finished) if isinstance(f, InvalidInput)}
        if not errors:
            return normalise(tower.run(finished)), errors
        rows = np.zeros((len(finished), self.dim), dtype=np.float32)
        kept = [p for p in range(len(finished)) if p not in errors]
        if kept:
            rows[kept] = normalise(tower.run([finished[p] for p in kept]))
        return rows, errors

    def plan(self, items: Sequence[Item]) -> Plan:
        """The :class:`Plan` of ``items``: every face's first step."""
        plan = Plan(np.zeros((len(items), self.dim), dtype=np.float32), [0] * len(items))
        for position, item in enumerate(items):
            if (cached := self.cached_text(item)) is not None:
                plan.vectors[position], plan.tokens[position] = cached
                plan.cache_hits += 1
                continue
            try:
                self.tower(item)
            except InvalidInput as exc:
                plan.errors.append(exc)
                continue
            plan.pending.setdefault(item.modality, []).append(position)
        return plan

    def settle_texts(self, plan: Plan, items: Sequence[Item], embedded: Iterable[tuple[int, Any]]) -> None:
        """Every face's last step: the tokens of the texts embedded, ``(position, token ids)``,
        and their vectors (already in ``plan.vectors``) remembered in the text cache."""
        for position, ids in embedded:
            plan.tokens[position] = len(ids)
            self.remember_text(items[position], plan.vectors[position], len(ids))

    # -- the synchronous run ------------------------------------------------------------------------

    def encode(self, items: list[Item], stop_on_error: bool) -> tuple[np.ndarray, list[InvalidInput]]:
        """Vectors of ``items`` (rows in item order) and the errors of the bad ones.

        Light towers (text) prepare inline, heavy ones (images) on the worker pool a few batches
        ahead of inference. With ``stop_on_error`` the work stops past the first bad item in input
        order, and no batch runs once an error is known.
        """
        plan = self.plan(items)
        errors, vectors = plan.errors, plan.vectors
        by_modality = {m: [(p, items[p]) for p in positions] for m, positions in plan.pending.items()}
        light = {m: entries for m, entries in by_modality.items() if not self.model.towers[m].heavy}
        prepared_light = {m: self._prepare_inline(entries, errors) for m, entries in light.items()}
        for modality, entries in by_modality.items():
            if modality not in light:
                self._encode_heavy(modality, entries, vectors, errors, stop_on_error)
        if not (errors and stop_on_error):
            for modality, prepared in prepared_light.items():
                self._run_grouped(modality, prepared, vectors, errors)
            self.settle_texts(plan, items, prepared_light.get("text", []))
        return vectors, sorted(errors, key=lambda e: e.index if e.index is not None else -1)

    # -- the text cache (shared by every face) ------------------------------------------------------

    def cached_text(self, item: Item) -> tuple[np.ndarray, int] | None:
        """``(vector, tokens)`` of a text item seen recently, when the text cache is on."""
        if self.text_cache is None or item.kind != "text":
            return None
        return self.text_cache.get(item.value)

    def remember_text(self, item: Item, vector: np.ndarray, tokens: int) -> None:
        if self.text_cache is not None and item.kind == "text":
            self.text_cache.put(item.value, vector, tokens)

    def _prepare_inline(
        self, entries: list[tuple[int, Item]], errors: list[InvalidInput]
    ) -> list[tuple[int, Any]]:
        prepared = []
        for row, item in entries:
            try:
                prepared.append((row, self.prepare(item)))
            except InvalidInput as exc:
                errors.append(exc)
        return prepared

    def _run_grouped(
        self, modality: str, prepared: list[tuple[int, Any]], out: np.ndarray, errors: list[InvalidInput]
    ) -> None:
        tower = self.model.towers[modality]
        size = self.batch_size(modality)
        if tower.cost is not None:  # similar costs together: little padding, same vectors
            batches = by_cost([tower.cost(payload) for _, payload in prepared], size)
        else:
            batches = chunks(range(len(prepared)), size)
        for batch in batches:
            self._run_into(modality, [prepared[p] for p in batch], out, errors)

    def _encode_heavy(
        self,
        modality: str,
        entries: list[tuple[int, Item]],
        out: np.ndarray,
        errors: list[InvalidInput],
        stop_on_error: bool,
    ) -> None:
        def cutoff() -> float:
            return min((e.index for e in errors if e.index is not None), default=math.inf)

        def prepare(entry: tuple[int, Item]) -> Any:
            return self.prepare(entry[1])

        if stop_on_error:  # items past a known error need no work
            entries = [(row, item) for row, item in entries if item.index < cutoff()]
        batches = chunks(entries, self.batch_size(modality))
        for batch, results in prefetched(batches, prepare, self.prepare_pool):
            ok = []
            for (row, item), result in zip(batch, results, strict=True):
                if isinstance(result, InvalidInput):
                    errors.append(result)
                elif isinstance(result, Exception):
                    raise result
                elif not (stop_on_error and item.index > cutoff()):
                    ok.append((row, result))
            if stop_on_error and errors:
                if all(item.index > cutoff() for _, item in batch):
                    return
                continue
            if ok:
                self._run_into(modality, ok, out, errors)

    def _run_into(
        self, modality: str, batch: list[tuple[int, Any]], out: np.ndarray, errors: list[InvalidInput]
    ) -> None:
        """Run one batch of ``(row, payload)`` and write its vectors into ``out``."""
        rows, failed = self.run_batch(modality, [payload for _, payload in batch])
        errors.extend(failed.values())
        kept = [p for p in range(len(batch)) if p not in failed]
        out[[batch[p][0] for p in kept]] = rows[kept]
