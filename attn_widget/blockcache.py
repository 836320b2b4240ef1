"""A small least-recently-used cache of arrays under a byte budget, shared by threads: what an
attention block keeps of the pooled images and regions it computed (see trace.AttentionBlock)."""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterator

import numpy as np


class ArrayCache:
    """Arrays by key, least recently used dropped past ``nbytes``; arrays over a quarter of the
    budget (as :meth:`holding` may raise it a while) are returned but not kept. Kept arrays are
    made read-only: every caller gets the same one."""

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        self._limit = self.nbytes
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._total = 0  # bytes held, kept as items come and go (summing them on each put is O(n))
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> np.ndarray | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
            return hit

    def put(self, key: Hashable, value: np.ndarray) -> np.ndarray:
        value.setflags(write=False)
        if value.nbytes > self._limit // 4:
            return value
        with self._lock:
            old = self._items.pop(key, None)
            self._total += value.nbytes - (0 if old is None else old.nbytes)
            self._items[key] = value
            self._evict()
        return value

    @contextlib.contextmanager
    def holding(self, nbytes: int) -> Iterator[None]:
        """Hold at least ``nbytes`` meanwhile (e.g. a snapshot's pooled images, made once and
        read back as it is written), then shrink back to the budget."""
        with self._lock:
            before, self._limit = self._limit, max(self._limit, int(nbytes))
        try:
            yield
        finally:
            with self._lock:
                self._limit = before
                self._evict()

    def _evict(self) -> None:
        while self._total > self._limit:
            self._total -= self._items.popitem(last=False)[1].nbytes
