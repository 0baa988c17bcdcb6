"""batching.py alone, with a fake tower (a function of a batch that records what it was given)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from clipserve.batching import DynamicBatcher, by_cost, chunks, prefetched
from clipserve.errors import InvalidInput, Overloaded


class FakeTower:
    """``run`` doubles each item; an item ``"bad"`` gets an error row, ``"crash"`` fails the call.
    A ``held`` tower's calls wait for ``release`` to be set (at most 5 s)."""

    def __init__(self, seconds: float = 0.0, held: bool = False) -> None:
        self.batches: list[list] = []
        self.seconds = seconds
        self.release = threading.Event()
        if not held:
            self.release.set()

    def run(self, batch: list) -> list:
        self.batches.append(list(batch))
        self.release.wait(5)
        time.sleep(self.seconds)
        if "crash" in batch:
            raise RuntimeError("the model call failed")
        return [InvalidInput("bad item") if item == "bad" else item * 2 for item in batch]


def test_chunks_and_cost_groups_keep_every_position_once() -> None:
    assert [list(c) for c in chunks(list(range(7)), 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    costs = [5, 1, 9, 1, 5, 3]
    groups = list(by_cost(costs, 2))
    assert sorted(p for g in groups for p in g) == list(range(len(costs)))
    assert [[costs[p] for p in g] for g in groups] == [[1, 1], [3, 5], [5, 9]]  # similar costs together
    assert groups[0] == [1, 3]  # stable among equal costs


def test_prefetch_prepares_ahead_and_keeps_failures_in_their_slot() -> None:
    started: list[int] = []

    def prepare(item: int) -> int:
        started.append(item)
        if item == 4:
            raise ValueError("bad")
        return item * 10

    with ThreadPoolExecutor(2) as pool:
        batches = prefetched([[0, 1], [2, 3], [4, 5], [6]], prepare, pool, ahead=1)
        first, prepared = next(batches)
        assert (list(first), prepared) == ([0, 1], [0, 10])
        time.sleep(0.05)
        assert set(started) >= {2, 3}  # the next batch is being prepared while this one runs
        rest = list(batches)
    assert [list(b) for b, _ in rest] == [[2, 3], [4, 5], [6]]
    failed = rest[1][1]
    assert isinstance(failed[0], ValueError) and failed[1] == 50


def run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_callers_share_batches_in_submission_order() -> None:
    tower = FakeTower(seconds=0.02)

    async def scenario():
        with ThreadPoolExecutor(1) as executor:
            batcher = DynamicBatcher(tower.run, executor, max_batch_size=4, max_wait_ms=50)
            answers = await asyncio.gather(
                batcher.submit([1, 2]), batcher.submit([3]), batcher.submit([4, 5, 6])
            )
            await batcher.close()
        return answers

    assert run(scenario()) == [[2, 4], [6], [8, 10, 12]]
    assert [len(b) for b in tower.batches] == [4, 2]  # merged across callers, at most 4 a call
    assert [x for b in tower.batches for x in b] == [1, 2, 3, 4, 5, 6]


def test_a_bad_row_fails_its_caller_only_and_a_failed_call_fails_its_batch() -> None:
    tower = FakeTower()

    async def scenario():
        with ThreadPoolExecutor(1) as executor:
            batcher = DynamicBatcher(tower.run, executor, max_batch_size=8, max_wait_ms=20)
            good, bad = await asyncio.gather(
                batcher.submit([1]), batcher.submit(["bad"]), return_exceptions=True
            )
            crashed = await asyncio.gather(
                batcher.submit(["crash"]), batcher.submit([2]), return_exceptions=True
            )
            after = await batcher.submit([3])  # the batcher keeps serving
            await batcher.close()
        return good, bad, crashed, after

    good, bad, crashed, after = run(scenario())
    assert good == [2] and isinstance(bad, InvalidInput)
    assert all(isinstance(c, RuntimeError) for c in crashed)
    assert after == [6]


def test_a_full_queue_refuses_at_once_but_an_empty_one_takes_any_request() -> None:
    tower = FakeTower(held=True)

    async def scenario():
        with ThreadPoolExecutor(1) as executor:
            batcher = DynamicBatcher(tower.run, executor, max_batch_size=1, max_wait_ms=0, max_queue=3)
            huge = asyncio.ensure_future(
                batcher.submit(list(range(10)))
            )  # > max_queue: an empty queue takes it
            await asyncio.sleep(0.05)
            assert batcher.depth > 0
            with pytest.raises(Overloaded, match="limit 3"):
                await batcher.submit([1, 2, 3, 4])
            tower.release.set()
            answer = await huge
            await batcher.close()
        return answer

    assert run(scenario()) == [2 * i for i in range(10)]


def test_a_callers_items_batch_by_cost_as_the_synchronous_path_does() -> None:
    tower = FakeTower()
    texts = ["a" * n for n in [5, 1, 9, 1, 5, 3]]

    async def scenario():
        with ThreadPoolExecutor(1) as executor:
            batcher = DynamicBatcher(tower.run, executor, max_batch_size=2, max_wait_ms=20, cost=len)
            answer = await batcher.submit(texts)
            await batcher.close()
        return answer

    assert run(scenario()) == [text * 2 for text in texts]  # rows in the caller's order
    expected = [[len(texts[p]) for p in batch] for batch in by_cost([len(t) for t in texts], 2)]
    assert [sorted(len(t) for t in batch) for batch in tower.batches] == expected


def test_waiting_callers_batch_by_cost_around_the_oldest_item() -> None:
    tower = FakeTower(held=True)

    async def scenario():
        with ThreadPoolExecutor(1) as executor:
            batcher = DynamicBatcher(tower.run, executor, max_batch_size=3, max_wait_ms=0, cost=len)
            first = asyncio.ensure_future(batcher.submit(["x"]))
            await asyncio.sleep(0.05)  # "x" is in the model; the next three callers queue
            later = [
                asyncio.ensure_future(batcher.submit(texts))
                for texts in (["a" * 8], ["b", "bb", "b" * 7], ["c", "c" * 8, "cc"])
            ]
            await asyncio.sleep(0.05)
            tower.release.set()
            answers = await asyncio.gather(first, *later)
            await batcher.close()
        return answers

    assert run(scenario()) == [["xx"], ["a" * 16], ["bb", "bbbb", "b" * 14], ["cc", "c" * 16, "cccc"]]
    lengths = [[len(t) for t in batch] for batch in tower.batches]
    # first-come first-served would have padded [8, 1, 2], [7, 1, 2], [8]
    assert lengths == [[1], [8, 7, 8], [1, 2, 1], [2]]


def test_close_cancels_the_callers_still_waiting_and_the_batch_running() -> None:
    tower = FakeTower(held=True)

    async def scenario():
        with ThreadPoolExecutor(1) as executor:
            batcher = DynamicBatcher(tower.run, executor, max_batch_size=1, max_wait_ms=0)
            running = asyncio.ensure_future(batcher.submit([1]))
            waiting = asyncio.ensure_future(batcher.submit([2]))
            await asyncio.sleep(0.05)
            await asyncio.wait_for(batcher.close(), 2)
            tower.release.set()
            outcomes = await asyncio.wait_for(asyncio.gather(running, waiting, return_exceptions=True), 2)
        return outcomes

    assert all(isinstance(o, asyncio.CancelledError) for o in run(scenario()))


@pytest.mark.parametrize("cost", [None, len])
def test_the_items_of_a_caller_that_gave_up_never_reach_the_model(cost) -> None:
    tower = FakeTower(held=True)

    async def scenario():
        with ThreadPoolExecutor(1) as executor:
            batcher = DynamicBatcher(tower.run, executor, max_batch_size=2, max_wait_ms=0, cost=cost)
            first = asyncio.ensure_future(batcher.submit(["x"]))
            await asyncio.sleep(0.05)
            gone = asyncio.ensure_future(batcher.submit(["gone", "gone too", "g"]))
            kept = asyncio.ensure_future(batcher.submit(["kept", "k"]))
            await asyncio.sleep(0.05)
            gone.cancel()
            tower.release.set()
            answers = await asyncio.gather(first, kept)
            await batcher.close()
        return answers

    assert run(scenario()) == [["xx"], ["keptkept", "kk"]]
    assert not any(item.startswith("g") for batch in tower.batches for item in batch)


def test_a_finish_step_runs_off_the_inference_thread_and_overlaps_the_model() -> None:
    """The second batch is finished while the model still runs the first: the first model call
    waits for that (a batcher finishing in series with the model would time out here)."""
    threads: dict[str, set[str]] = {"finish": set(), "run": set()}
    second_finished = threading.Event()
    overlapped = []

    def finish(batch: list) -> list:
        threads["finish"].add(threading.current_thread().name)
        if batch[0].startswith("b"):
            second_finished.set()
        return [item.upper() for item in batch]

    def model(batch: list) -> list:
        threads["run"].add(threading.current_thread().name)
        if batch[0].startswith("A"):
            overlapped.append(second_finished.wait(5))
        return [item * 2 for item in batch]

    async def scenario():
        with (
            ThreadPoolExecutor(1, thread_name_prefix="infer") as executor,
            ThreadPoolExecutor(1, thread_name_prefix="finish") as finishing,
        ):
            batcher = DynamicBatcher(
                model, executor, max_batch_size=2, max_wait_ms=0, finish=finish, finish_executor=finishing
            )
            first = asyncio.ensure_future(batcher.submit(["a1", "a2"]))
            await asyncio.sleep(0.05)
            second = asyncio.ensure_future(batcher.submit(["b1", "b2"]))
            answers = await asyncio.wait_for(asyncio.gather(first, second), 10)
            await batcher.close()
        return answers

    assert run(scenario()) == [["A1A1", "A2A2"], ["B1B1", "B2B2"]]
    assert overlapped == [True]
    assert {name.split("_")[0] for name in threads["finish"]} == {"finish"}
    assert {name.split("_")[0] for name in threads["run"]} == {"infer"}


def test_a_busy_model_does_not_shrink_the_next_batch() -> None:
    """Items arriving one by one while the model is busy wait for it, and run as one batch."""
    tower = FakeTower(held=True)

    async def scenario():
        with (
            ThreadPoolExecutor(1) as executor,
            ThreadPoolExecutor(1) as finishing,
        ):
            batcher = DynamicBatcher(
                tower.run, executor, max_batch_size=8, max_wait_ms=1, finish=list, finish_executor=finishing
            )
            calls = [asyncio.ensure_future(batcher.submit(["first"]))]
            await asyncio.sleep(0.05)
            for item in "abc":
                calls.append(asyncio.ensure_future(batcher.submit([item])))
                await asyncio.sleep(0.02)
            tower.release.set()
            await asyncio.wait_for(asyncio.gather(*calls), 10)
            await batcher.close()

    run(scenario())
    assert tower.batches == [["first"], ["a", "b", "c"]]


def test_a_failing_finish_step_fails_its_batch_and_the_batcher_goes_on() -> None:
    def finish(batch: list) -> list:
        if "crash" in batch:
            raise RuntimeError("finish failed")
        return batch

    async def scenario():
        with ThreadPoolExecutor(1) as executor, ThreadPoolExecutor(1) as finishing:
            batcher = DynamicBatcher(
                FakeTower().run,
                executor,
                max_batch_size=1,
                max_wait_ms=0,
                finish=finish,
                finish_executor=finishing,
            )
            failed = await asyncio.gather(batcher.submit(["crash"]), return_exceptions=True)
            later = await batcher.submit(["ok"])
            await batcher.close()
        return failed, later

    failed, later = run(scenario())
    assert isinstance(failed[0], RuntimeError) and "finish failed" in str(failed[0])
    assert later == ["okok"]
