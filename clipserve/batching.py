"""Minibatching: cut work into batches, group items of similar cost, overlap preprocessing.

Independent of HTTP and of backends: it moves items and arrays, nothing else.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def by_cost(costs: Sequence[int], size: int) -> Iterator[list[int]]:
    """Batches of positions whose costs are close: sorted by cost (stable), then cut into ``size``.

    Callers scatter results back by position, so the user's order is restored.
    """
    order = sorted(range(len(costs)), key=costs.__getitem__)
    for batch in chunks(order, size):
        yield list(batch)


def prefetched(
    batches: Iterable[Sequence[T]],
    prepare: Callable[[T], R],
    pool: Executor,
    ahead: int = 2,
) -> Iterator[tuple[Sequence[T], list[R | Exception]]]:
    """Yield ``(batch, prepared)`` in order while the pool prepares up to ``ahead`` later batches.

    The consumer runs inference between yields, so preprocessing overlaps it. A failed item's slot
    holds its exception; the other items of the batch are unaffected.
    """
    pending: deque[tuple[Sequence[T], list[Future[R]]]] = deque()
    source = iter(batches)
    try:
        while True:
            while len(pending) <= ahead:
                batch = next(source, None)
                if batch is None:
                    break
                pending.append((batch, [pool.submit(prepare, item) for item in batch]))
            if not pending:
                return
            batch, futures = pending.popleft()
            yield batch, [_outcome(f) for f in futures]
    finally:
        for _, futures in pending:
            for future in futures:
                future.cancel()


def _outcome(future: Future[R]) -> R | Exception:
    exc = future.exception()
    return exc if exc is not None else future.result()
