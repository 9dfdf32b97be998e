"""In-process LRU cache of frozen-backbone features.

The frozen part of a transferred model does not depend on the trial (it is in
eval mode and never updated), so its output on a split is computed once per
(source model hash, dataset, split, frozen depth) and reused by every trial
that freezes the same depth without augmentation.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch

DEFAULT_MAX_BYTES = int(os.environ.get("TUNEFLEET_FEATURE_CACHE_MB", "2048")) * 2**20


class FeatureCache:
    """Least-recently-used tensors on the CPU, bounded by their total size in bytes."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> torch.Tensor | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
                self.hits += 1
            return value

    def put(self, key: Hashable, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.max_bytes:
            return  # larger than the whole cache: keep it for this trial only
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.numel() * old.element_size()
            self._entries[key] = value
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.numel() * evicted.element_size()

    def get_or_compute(
        self, key: Hashable, compute: Callable[[], torch.Tensor]
    ) -> tuple[torch.Tensor, bool]:
        """The cached value and True, or the computed (and now cached) value and False."""
        value = self.get(key)
        if value is not None:
            return value, True
        with self._lock:
            self.misses += 1
        value = compute().cpu()
        self.put(key, value)
        return value, False

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)


FEATURES = FeatureCache()
