"""Index samplers: an infinite seeded training stream, aspect-ratio grouping, inference shards.

Training order is a pure function of (seed, global position): epoch ``e`` of the whole stream is a
permutation drawn from a generator seeded with ``(seed, e)``, and rank ``r`` of ``W`` takes the
global positions ``r, r + W, r + 2W, ...``. Any position can be reached without replaying images.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch


def mix_seed(*values: int) -> int:
    """Combines integers into one well-mixed 63-bit seed (numpy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


_ORDER_STREAM = 0x5A4D  # keeps order seeds apart from augmentation seeds derived from the same seed


class TrainingSampler:
    """Infinite stream of ``(dataset_index, global_position)`` pairs for one rank.

    Args:
        size: number of images in the dataset.
        seed: the order's seed; identical on every rank.
        shuffle: a fresh permutation per epoch (False: 0..size-1 every epoch).
        rank, world_size: this process's share: global positions ``rank + k * world_size``.
        start: first local position (the k-th item this rank would have produced).
    """

    def __init__(
        self,
        size: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
    ):
        if size <= 0:
            raise ValueError(f"TrainingSampler: dataset 'size' must be > 0, got {size}")
        if not 0 <= rank < world_size:
            raise ValueError(
                f"TrainingSampler: 'rank' {rank} is not in [0, world_size={world_size})"
            )
        if start < 0:
            raise ValueError(f"TrainingSampler: 'start' must be >= 0, got {start}")
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.world_size, self.start = rank, world_size, start

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The dataset indices of epoch ``epoch`` of the global stream, int64 [size]."""
        if not self.shuffle:
            return np.arange(self.size, dtype=np.int64)
        generator = torch.Generator()
        generator.manual_seed(mix_seed(_ORDER_STREAM, self.seed, epoch))
        return torch.randperm(self.size, generator=generator).numpy()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start * self.world_size + self.rank
        epoch, order = -1, None
        while True:
            current, offset = divmod(position, self.size)
            if current != epoch:
                epoch, order = current, self.epoch_order(current)
            yield int(order[offset]), position
            position += self.world_size


class TrainBatchSampler:
    """Cuts a :class:`TrainingSampler` stream into batches, optionally grouped by aspect ratio.

    With grouping, items wait in a bucket per group (landscape: width >= height, portrait) and a
    batch is emitted when a bucket is full. The buckets depend on everything before, so starting
    at batch ``start_batch`` replays the index stream from the beginning (indices only: cheap)
    and skips the batches before; without grouping the sampler starts directly at the position.

    Yields lists of ``(dataset_index, global_position)``.
    """

    def __init__(
        self,
        sampler: TrainingSampler,
        batch_size: int,
        group_ids: Sequence[int] | np.ndarray | None = None,
        start_batch: int = 0,
    ):
        if batch_size <= 0:
            raise ValueError(f"TrainBatchSampler: 'batch_size' must be > 0, got {batch_size}")
        if sampler.start != 0:
            raise ValueError(
                "TrainBatchSampler: give the start as 'start_batch', not to the sampler"
            )
        self.sampler, self.batch_size, self.start_batch = sampler, batch_size, start_batch
        self.group_ids = None if group_ids is None else np.asarray(group_ids, dtype=np.int64)
        if self.group_ids is not None and len(self.group_ids) != sampler.size:
            raise ValueError(
                f"TrainBatchSampler: {len(self.group_ids)} group ids for {sampler.size} images"
            )

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        if self.group_ids is None:
            sampler = TrainingSampler(
                self.sampler.size,
                self.sampler.seed,
                self.sampler.shuffle,
                self.sampler.rank,
                self.sampler.world_size,
                start=self.start_batch * self.batch_size,
            )
            batch: list[tuple[int, int]] = []
            for item in sampler:
                batch.append(item)
                if len(batch) == self.batch_size:
                    yield batch
                    batch = []
        buckets: dict[int, list[tuple[int, int]]] = {}
        emitted = 0
        for item in self.sampler:
            bucket = buckets.setdefault(int(self.group_ids[item[0]]), [])
            bucket.append(item)
            if len(bucket) == self.batch_size:
                if emitted >= self.start_batch:
                    yield list(bucket)
                emitted += 1
                bucket.clear()


class InferenceSampler:
    """Each index exactly once over all ranks: rank r gets one contiguous shard (sizes differ by
    at most one, the first ranks take the extra images)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        if size < 0:
            raise ValueError(f"InferenceSampler: 'size' must be >= 0, got {size}")
        if not 0 <= rank < world_size:
            raise ValueError(
                f"InferenceSampler: 'rank' {rank} is not in [0, world_size={world_size})"
            )
        per_rank, extra = divmod(size, world_size)
        self.begin = rank * per_rank + min(rank, extra)
        self.end = self.begin + per_rank + (1 if rank < extra else 0)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.begin, self.end))

    def __len__(self) -> int:
        return self.end - self.begin
