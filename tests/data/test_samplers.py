"""Samplers: disjoint rank shards, seeded order, start offsets, grouping, inference coverage."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from idip.data.samplers import InferenceSampler, TrainBatchSampler, TrainingSampler


def _take(iterable, n):
    return list(itertools.islice(iter(iterable), n))


@pytest.mark.parametrize("size", [10, 7])
def test_ranks_take_disjoint_shares_of_each_epoch(size):
    world = 2
    streams = [
        _take(TrainingSampler(size, seed=3, rank=r, world_size=world), 3 * size)
        for r in range(world)
    ]
    positions = sorted(p for stream in streams for _, p in stream)
    assert len(set(positions)) == len(positions)  # no global position produced twice
    by_position = {p: i for stream in streams for i, p in stream}
    for epoch in range(2):  # every complete epoch is a permutation of the dataset
        assert sorted(by_position[p] for p in range(epoch * size, (epoch + 1) * size)) == list(
            range(size)
        )
    assert [i for i, _ in streams[0][:3]] != [i for i, _ in streams[1][:3]]


def test_order_depends_on_seed_and_epoch_only():
    a = _take(TrainingSampler(50, seed=1), 100)
    assert a == _take(TrainingSampler(50, seed=1), 100)
    assert a != _take(TrainingSampler(50, seed=2), 100)
    assert [i for i, _ in a[:50]] != [i for i, _ in a[50:]]  # a new permutation per epoch
    assert [i for i, _ in a[:50]] != list(range(50))


def test_start_continues_the_stream_without_replay():
    full = _take(TrainingSampler(13, seed=4, rank=1, world_size=3), 40)
    for start in (1, 12, 27):
        assert (
            _take(TrainingSampler(13, seed=4, rank=1, world_size=3, start=start), 40 - start)
            == full[start:]
        )


@pytest.mark.parametrize("grouped", [False, True])
def test_batch_sampler_resumes_at_any_batch(grouped):
    groups = np.array([i % 3 == 0 for i in range(23)], dtype=np.int64) if grouped else None
    sampler = TrainingSampler(23, seed=9, rank=0, world_size=2)
    full = _take(TrainBatchSampler(sampler, 4, groups), 30)
    for start in (1, 7, 20):
        assert (
            _take(TrainBatchSampler(sampler, 4, groups, start_batch=start), 30 - start)
            == full[start:]
        )
    if grouped:
        assert all(len({int(groups[i]) for i, _ in batch}) == 1 for batch in full)
        assert {int(groups[batch[0][0]]) for batch in full} == {0, 1}


@pytest.mark.parametrize("size,world", [(11, 2), (2, 4), (12, 3), (0, 2)])
def test_inference_sampler_covers_each_image_once_in_contiguous_shards(size, world):
    shards = [list(InferenceSampler(size, r, world)) for r in range(world)]
    assert sum(shards, []) == list(range(size))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert [len(InferenceSampler(size, r, world)) for r in range(world)] == list(map(len, shards))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="rank"):
        TrainingSampler(5, 0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="size"):
        TrainingSampler(0, 0)
    with pytest.raises(ValueError, match="batch_size"):
        TrainBatchSampler(TrainingSampler(5, 0), 0)
