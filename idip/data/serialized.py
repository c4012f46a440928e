"""A list of records stored as pickled bytes in one numpy buffer.

A list of many small Python dicts, read by forked DataLoader workers, is slowly copied into each
worker (reading an object touches its reference count, which dirties its page). One flat byte
buffer is shared for real.
"""

from __future__ import annotations

import pickle

import numpy as np


class SerializedList:
    """Read-only sequence of picklable items; ``lst[i]`` unpickles item i."""

    def __init__(self, items: list):
        blobs = [
            np.frombuffer(pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8)
            for item in items
        ]
        self._ends = np.cumsum([len(b) for b in blobs], dtype=np.int64)
        self._buffer = np.concatenate(blobs) if blobs else np.zeros(0, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index %= len(self)
        start = int(self._ends[index - 1]) if index > 0 else 0
        return pickle.loads(memoryview(self._buffer[start : int(self._ends[index])]))
