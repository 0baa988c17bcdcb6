"""An LRU of text vectors keyed by the exact text: search boxes send the same queries again and again."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np


class TextCache:
    """The vectors (and token counts) of the ``size`` most recently used texts of one model.

    Exact: a hit returns the vector computed for that very text. Thread-safe.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"text_cache must be at least 1 to cache, got {size}")
        self.size = size
        self.hits = self.misses = 0
        self._entries: OrderedDict[str, tuple[np.ndarray, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, text: str) -> tuple[np.ndarray, int] | None:
        """``(vector, tokens)`` of ``text``, or None (counted as a miss)."""
        with self._lock:
            entry = self._entries.get(text)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(text)
            self.hits += 1
            return entry

    def put(self, text: str, vector: np.ndarray, tokens: int) -> None:
        """Remember ``text``'s vector, forgetting the least recently used beyond ``size``."""
        stored = np.array(vector, dtype=np.float32)
        stored.flags.writeable = False
        with self._lock:
            self._entries[text] = (stored, tokens)
            self._entries.move_to_end(text)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
