"""What a model family provides to the pipeline: one :class:`Tower` per modality it embeds."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from clipserve.inputs import Item
from clipserve.zoo import ModelSpec


@dataclass(frozen=True)
class Tower:
    """How one modality of one model is embedded.

    ``prepare`` turns one item (its source already resolved to bytes, a path, an array…) into a
    payload the model takes, or raises :class:`~clipserve.errors.InvalidInput` naming the item; it
    runs on worker threads when ``heavy``. ``finish``, when a tower has it, completes a whole batch
    of payloads just before ``run`` (the CPU image paths normalise their pixels there; the GPU
    image path decodes its JPEGs there, in one call): each payload becomes the one ``run`` takes,
    or the ``InvalidInput`` of its item, which fails that item alone. A server runs it off the
    inference thread, while the model runs the batch before. ``run`` embeds a batch of payloads
    into unnormalised float32 rows, and should do little besides the model call. ``cost``
    ranks payloads so that batches of similar cost waste little padding.
    Text payloads are token id lists (their length is what ``/v1/embeddings`` reports as usage).
    """

    modality: str
    prepare: Callable[[Item], Any]
    run: Callable[[Sequence[Any]], np.ndarray]
    cost: Callable[[Any], int] | None = None
    heavy: bool = True
    finish: Callable[[Sequence[Any]], list[Any]] | None = None
    max_batch: int | None = None
    """Most items per model call for this tower, below the ``batch_size`` setting (None: no cap)."""
    weight: int = 1
    """How many items one of this modality counts for in a server's in-flight limit, by the memory
    its prepared payload may hold (an audio clip: 6 per 5-second window it may hold)."""


class Model(Protocol):
    """A loaded model of some family: its towers, its temperatures and what really runs."""

    spec: ModelSpec
    towers: dict[str, Tower]

    def logit_scale(self, query: str, candidate: str) -> float:
        """exp of the learned temperature between two modalities (used by ``rank``)."""
        ...

    def info(self) -> dict[str, object]:
        """Family, backend, device, precision, providers, weights: what runs."""
        ...

    def close(self) -> None:
        """Free what the model holds (sessions, tensors)."""
        ...
