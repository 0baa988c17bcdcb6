"""The memory of the decodes in flight, bounded once for the whole process, and a decode deadline.

Each image or audio decode reserves what it will hold (estimated from its header, before a pixel
or sample is decoded) from one :class:`DecodeBudget` that every model of the process shares: a
server serving two models has one bound, not two. A decode that does not fit waits for room; one
larger than the whole budget waits until it can run alone, so the memory held is at most
``max(budget, the largest single decode)``. The wait for room is not part of a decode's
deadline; a wait past :data:`MAX_WAIT_S` gives up with :class:`~clipserve.errors.Overloaded` (a 503
with ``Retry-After`` from the server), so a busy server sheds load rather than failing inputs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from clipserve.errors import InvalidInput, Overloaded

MIB = 1024 * 1024
MAX_WAIT_S = 60.0
"""Longest wait for room in the budget before a decode gives up as overloaded."""


class DecodeBudget:
    """Bytes that decodes may hold at once (thread-safe)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._room = threading.Condition()

    def grow_to(self, capacity: int) -> None:
        """Raise the capacity (never lower it: another model of the process may rely on it)."""
        with self._room:
            if capacity > self.capacity:
                self.capacity = capacity
                self._room.notify_all()

    @contextmanager
    def reserve(
        self, nbytes: int, index: int | None = None, max_wait_s: float = MAX_WAIT_S
    ) -> Iterator[None]:
        """Hold ``nbytes`` (at most the whole budget) while the block runs; waits for room first,
        at most ``max_wait_s`` (then :class:`~clipserve.errors.Overloaded`, naming item ``index``)."""
        with self._room:
            take = min(nbytes, self.capacity)
            if not self._room.wait_for(
                lambda: self.used == 0 or self.used + take <= self.capacity, max_wait_s
            ):
                where = f"item {index}: " if index is not None else ""
                raise Overloaded(
                    f"{where}the decode budget ({self.capacity // MIB} MiB, max_decode_mb) stayed full for "
                    f"{max_wait_s:g} s; retry later"
                )
            self.used += take
        try:
            yield
        finally:
            with self._room:
                self.used -= take
                self._room.notify_all()


_PROCESS_BUDGET = DecodeBudget(0)


def process_budget(max_decode_mb: float) -> DecodeBudget:
    """The process's one decode budget, grown to at least ``max_decode_mb``."""
    _PROCESS_BUDGET.grow_to(int(max_decode_mb * MIB))
    return _PROCESS_BUDGET


class DecodeTimeout(Exception):
    """A decode ran past its deadline (raised between the reads of its data)."""


class Deadline:
    """The end of one decode: :meth:`check` raises :class:`DecodeTimeout` once it has passed."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.end:
            raise DecodeTimeout

    def restart(self) -> None:
        """Start the clock again: time spent waiting for the decode budget is not decoding."""
        self.end = time.monotonic() + self.seconds

    def refusal(self, what: str, index: int | None) -> InvalidInput:
        return InvalidInput(f"decoding the {what} took longer than {self.seconds:g} s (max_decode_s)", index)
