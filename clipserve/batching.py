"""Minibatching: cut work into batches, group items of similar cost, overlap preprocessing, and
merge concurrent requests into batches (the async :class:`DynamicBatcher`, used by the server).

Independent of HTTP and of backends: it moves items and arrays, nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from clipserve.errors import Overloaded

T = TypeVar("T")
R = TypeVar("R")


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def cost_order(costs: Sequence[int]) -> list[int]:
    """Positions sorted by cost, equal costs in their given order: the one grouping rule of the
    synchronous path and of the server's batcher."""
    return sorted(range(len(costs)), key=costs.__getitem__)


def by_cost(costs: Sequence[int], size: int) -> Iterator[list[int]]:
    """Batches of positions whose costs are close: :func:`cost_order`, cut into ``size``.

    Callers scatter results back by position, so the user's order is restored.
    """
    for batch in chunks(cost_order(costs), size):
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


class DynamicBatcher:
    """Merges items submitted by concurrent callers into batches for one model call.

    One asyncio task forms batches: once an item waits, it waits up to ``max_wait_ms`` for more, up
    to ``max_batch_size``, and runs ``run`` on a batch in ``executor`` (one inference thread).
    ``run`` returns one row per item; a row that is an exception fails only the caller of that
    item.

    With a ``finish`` (the batch's last step before the model: stacking, normalising, a GPU's
    batched decode), it runs on ``finish_executor`` and ``run`` takes what it returns: the
    inference thread does only the model. While the model runs a batch, the next batch is formed
    and finished: it is taken as soon as it is full, or once the model is free (a busy model
    never makes a batch smaller than the waiting items allow).

    With a ``cost`` (a text's token count), batches group similar costs as the synchronous path
    does (:func:`by_cost`): a caller's items queue in cost order, and when more items wait than a
    batch takes, the batch is the oldest waiting item and those nearest it in cost (the run of
    ``max_batch_size`` in cost order around it that pads least). Every batch holds the oldest
    item, so none waits behind more than the items queued before it. Without a cost, batches take
    the items in submission order.

    At most ``max_queue`` items wait (but an empty queue takes any one submission); beyond that
    :meth:`submit` raises :class:`~clipserve.errors.Overloaded` at once instead of letting the queue
    grow without limit.
    """

    def __init__(
        self,
        run: Callable[[Any], Any],
        executor: Executor,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 1024,
        on_batch: Callable[[int], None] | None = None,
        cost: Callable[[T], int] | None = None,
        finish: Callable[[list[T]], Any] | None = None,
        finish_executor: Executor | None = None,
    ) -> None:
        if finish is not None and finish_executor is None:
            raise ValueError("a batcher with a finish step needs the executor it runs on")
        self.run, self.executor = run, executor
        self.finish, self.finish_executor = finish, finish_executor
        self.max_batch_size, self.max_wait_s, self.max_queue = max_batch_size, max_wait_ms / 1000, max_queue
        self.on_batch, self.cost = on_batch, cost
        self._waiting: deque[tuple[T, asyncio.Future]] = deque()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._running: asyncio.Task | None = None
        """The batch in the model, if any."""

    @property
    def depth(self) -> int:
        """Items waiting for a batch."""
        return len(self._waiting)

    def check_room(self, count: int) -> None:
        """Raise :class:`~clipserve.errors.Overloaded` when ``count`` more items would pass the
        queue limit; an empty queue takes any number (one request always fits)."""
        if self.depth and self.depth + count > self.max_queue:
            raise Overloaded(
                f"server busy: {self.depth} items are waiting (limit {self.max_queue}); retry later"
            )

    async def submit(self, items: Sequence[T]) -> list[Any]:
        """Queue ``items`` (all or none) and return their rows, in order, once their batches ran;
        raises the error of the first failed item, once all of them are done."""
        self.check_room(len(items))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop())
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        order = range(len(items)) if self.cost is None else cost_order([self.cost(x) for x in items])
        self._waiting.extend((items[i], futures[i]) for i in order)
        self._arrived.set()
        rows = await asyncio.gather(*futures, return_exceptions=True)
        if failed := next((row for row in rows if isinstance(row, BaseException)), None):
            raise failed
        return rows

    async def close(self) -> None:
        """Stop forming batches; callers still waiting get ``CancelledError``."""
        for task in (self._task, self._running):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for _, future in self._waiting:
            future.cancel()
        self._waiting.clear()

    def _model_busy(self) -> bool:
        return self._running is not None and not self._running.done()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._gathered()
            batch = self._take()
            if not batch:
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch))
            work: Any = [item for item, _ in batch]
            if self.finish is not None:
                try:
                    work = await loop.run_in_executor(self.finish_executor, self.finish, work)
                except asyncio.CancelledError:
                    _cancel(batch)
                    raise
                except Exception as exc:
                    _fail(batch, exc)
                    continue
            if self._running is not None:  # one batch at a time in the model
                try:
                    await asyncio.wait([self._running])
                except asyncio.CancelledError:
                    _cancel(batch)
                    raise
            if all(future.done() for _, future in batch):  # every caller gave up meanwhile
                continue
            self._running = asyncio.create_task(self._run_batch(batch, work))

    async def _gathered(self) -> None:
        """Return once a batch should be taken: items waited ``max_wait_ms`` (or longer, while the
        model was busy) and the model is free, or a batch is full and the model is free or the
        batch has a finish step to run meanwhile."""
        loop = asyncio.get_running_loop()
        while not self._waiting:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = loop.time() + self.max_wait_s
        while True:
            busy, left = self._model_busy(), deadline - loop.time()
            if len(self._waiting) >= self.max_batch_size:
                if not busy or self.finish is not None:
                    return
            elif left <= 0 and not busy:
                return
            self._arrived.clear()
            arrival = asyncio.ensure_future(self._arrived.wait())
            waits = {arrival, self._running} if busy else {arrival}
            try:
                timeout = left if left > 0 else None
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                arrival.cancel()

    async def _run_batch(self, batch: list[tuple[T, asyncio.Future]], work: Any) -> None:
        try:
            rows = await asyncio.get_running_loop().run_in_executor(self.executor, self.run, work)
        except asyncio.CancelledError:  # closed while the batch ran: its callers learn it too
            _cancel(batch)
            raise
        except Exception as exc:  # the model call failed: every caller of this batch learns why
            _fail(batch, exc)
            return
        for (_, future), row in zip(batch, rows, strict=True):
            if future.done():
                continue
            if isinstance(row, BaseException):
                future.set_exception(row)
            else:
                future.set_result(row)

    def _take(self) -> list[tuple[T, asyncio.Future]]:
        """The next batch, out of the waiting items (those of cancelled callers dropped)."""
        size = self.max_batch_size
        if self.cost is None or len(self._waiting) <= size:
            batch = []
            while self._waiting and len(batch) < size:
                entry = self._waiting.popleft()
                if not entry[1].done():
                    batch.append(entry)
            return batch
        waiting = [entry for entry in self._waiting if not entry[1].done()]
        if len(waiting) <= size:
            self._waiting.clear()
            return waiting
        costs = [self.cost(item) for item, _ in waiting]
        order = cost_order(costs)
        oldest = order.index(0)
        starts = range(max(0, oldest - size + 1), min(oldest, len(order) - size) + 1)

        def padding(start: int) -> int:
            window = [costs[p] for p in order[start : start + size]]
            return size * window[-1] - sum(window)

        best = min(starts, key=padding)
        chosen = set(order[best : best + size])
        self._waiting = deque(entry for p, entry in enumerate(waiting) if p not in chosen)
        return [entry for p, entry in enumerate(waiting) if p in chosen]


def _cancel(batch: list[tuple[Any, asyncio.Future]]) -> None:
    for _, future in batch:
        future.cancel()


def _fail(batch: list[tuple[Any, asyncio.Future]], exc: Exception) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)
