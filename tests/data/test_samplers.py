"""Samplers: grouping, sharding, determinism, and exactly-once inference coverage."""

from __future__ import annotations

import itertools

import pytest

from detkit.data.samplers import (
    GroupedBatchSampler,
    InferenceSampler,
    TrainingSampler,
    aspect_ratio_groups,
)


def _take(iterable, n):
    return list(itertools.islice(iterable, n))


def test_training_sampler_is_infinite_seeded_and_sharded():
    a = _take(TrainingSampler(10, seed=3, rank=0, world_size=1), 30)
    assert a == _take(TrainingSampler(10, seed=3, rank=0, world_size=1), 30)
    assert a != _take(TrainingSampler(10, seed=4, rank=0, world_size=1), 30)
    for epoch in range(3):  # every epoch is a permutation
        assert sorted(a[10 * epoch : 10 * epoch + 10]) == list(range(10))
    r0 = _take(TrainingSampler(10, seed=3, rank=0, world_size=2), 5)
    r1 = _take(TrainingSampler(10, seed=3, rank=1, world_size=2), 5)
    assert sorted(r0 + r1) == list(range(10))  # one epoch split between the two ranks
    assert r0 == a[0:10:2] and r1 == a[1:10:2]


def test_grouped_batches_share_orientation_and_shards_are_disjoint():
    records = [
        {"width": 100, "height": 50} if i % 3 else {"width": 50, "height": 100} for i in range(24)
    ]
    groups = aspect_ratio_groups(records)
    assert groups[0] == 1 and groups[1] == 0
    per_rank = []
    for rank in range(2):
        sampler = TrainingSampler(len(records), seed=0, rank=rank, world_size=2)
        batches = _take(GroupedBatchSampler(sampler, groups, batch_size=2), 40)
        assert all(len(b) == 2 and groups[b[0]] == groups[b[1]] for b in batches)
        assert {groups[b[0]] for b in batches} == {0, 1}
        per_rank.append(batches)
    assert per_rank[0] == _take(
        GroupedBatchSampler(
            TrainingSampler(24, seed=0, rank=0, world_size=2), groups, batch_size=2
        ),
        40,
    )
    # within the first epoch the ranks never share an image
    first_epoch = [TrainingSampler(24, seed=0, rank=r, world_size=2) for r in range(2)]
    shards = [set(_take(s, 12)) for s in first_epoch]
    assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == 24


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("size", [0, 1, 7, 10])
def test_inference_sampler_covers_each_index_once(size, world_size):
    shards = [
        list(InferenceSampler(size, rank=r, world_size=world_size)) for r in range(world_size)
    ]
    assert sorted(itertools.chain(*shards)) == list(range(size))
    assert [
        len(InferenceSampler(size, rank=r, world_size=world_size)) for r in range(world_size)
    ] == [len(s) for s in shards]
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_bad_rank_and_empty_training_set():
    with pytest.raises(ValueError, match="rank"):
        InferenceSampler(5, rank=2, world_size=2)
    with pytest.raises(ValueError, match="empty"):
        TrainingSampler(0, rank=0, world_size=1)
