"""Samplers: an infinite, sharded, seeded training stream with aspect-ratio grouped batches that
resumes exactly, and an inference sampler that gives every image to exactly one rank.
"""

from __future__ import annotations

from typing import Any, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from detkit.utils.distributed import rank_and_world_size


class TrainingSampler(Sampler[int]):
    """An endless stream of dataset indices for one rank.

    Every epoch is a fresh permutation drawn from a generator seeded with ``seed`` (the same on all
    ranks); rank r takes positions r, r + world_size, ... of it, so within an epoch the ranks see
    disjoint images and together see every image once.
    """

    def __init__(
        self,
        size: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
    ):
        if size <= 0:
            raise ValueError(f"cannot sample from an empty dataset (size={size})")
        self.size, self.seed, self.shuffle = int(size), int(seed), shuffle
        self.rank, self.world_size = rank_and_world_size(rank, world_size)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed)
        while True:
            order = (
                torch.randperm(self.size, generator=g) if self.shuffle else torch.arange(self.size)
            )
            yield from order[self.rank :: self.world_size].tolist()


def aspect_ratio_groups(records: Sequence[dict]) -> List[int]:
    """0 for landscape or square images (width >= height), 1 for portrait ones."""
    return [0 if r["width"] >= r["height"] else 1 for r in records]


class GroupedBatchSampler(Sampler[List[int]]):
    """Batches of ``batch_size`` indices that all share a group id (e.g. landscape vs portrait), so
    the images of a batch pad to a similar shape. Infinite when ``sampler`` is.

    Indices are buffered per group and a batch is yielded as soon as one group holds ``batch_size``.
    """

    def __init__(self, sampler: Sampler[int], group_ids: Sequence[int], batch_size: int):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.sampler, self.group_ids, self.batch_size = sampler, list(group_ids), int(batch_size)

    def __iter__(self) -> Iterator[List[int]]:
        buffers = {}
        for index in self.sampler:
            buffer = buffers.setdefault(self.group_ids[index], [])
            buffer.append(index)
            if len(buffer) == self.batch_size:
                yield buffer[:]
                buffer.clear()


class InferenceSampler(Sampler[int]):
    """A contiguous shard of ``range(size)`` per rank: every index exactly once over all ranks, in
    order, no padding duplicates (shards differ in length by at most one)."""

    def __init__(self, size: int, rank: Optional[int] = None, world_size: Optional[int] = None):
        self.size = int(size)
        self.rank, self.world_size = rank_and_world_size(rank, world_size)
        base, extra = divmod(self.size, self.world_size)
        self.start = self.rank * base + min(self.rank, extra)
        self.end = self.start + base + (1 if self.rank < extra else 0)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.end))

    def __len__(self) -> int:
        return self.end - self.start


# --------------------------------------------------------------------------- resumable training stream
# ``--resume`` must continue with exactly the batches, and the exact augmentations, the uninterrupted
# run would have seen. Two things make that so: the index stream (TrainingSampler + grouping) is
# skipped forward to the resume point on indices alone, without reading a single image; and every
# sample carries its own augmentation seed, derived from (seed, rank, batch number, position), with
# which the mapper is re-seeded just before the sample is drawn -- so the augmentation depends neither
# on which loader worker drew it nor on how many samples that worker drew before.


def sample_seed(seed: int, rank: int, batch: int, position: int) -> int:
    return int(np.random.SeedSequence([seed, rank, batch, position]).generate_state(1)[0])


def seedable_mappers(dataset: Any) -> list:
    """The mappers of ``dataset`` (or of each dataset of a union) that take an augmentation seed."""
    subs = getattr(dataset, "datasets", [dataset])
    return [d.mapper for d in subs if hasattr(getattr(d, "mapper", None), "set_seed")]


class SeededSamples(Dataset):
    """``dataset[(index, seed)]``: re-seed the augmentation, then return ``dataset[index]``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.mappers = seedable_mappers(dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: Tuple[int, int]) -> Any:
        index, seed = item
        for mapper in self.mappers:
            mapper.set_seed(seed)
        return self.dataset[index]


class ResumableBatchSampler(Sampler[List[Tuple[int, int]]]):
    """Endless batches of ``(index, augmentation seed)`` for one rank, starting at batch ``start``."""

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        *,
        seed: int,
        rank: int,
        world_size: int,
        start: int = 0,
        group_by_aspect_ratio: bool = True,
    ):
        n = len(dataset)
        self.groups = aspect_ratio_groups(dataset.records) if group_by_aspect_ratio else [0] * n
        self.sampler = TrainingSampler(n, seed=seed, rank=rank, world_size=world_size)
        self.batch_size, self.seed, self.rank = int(batch_size), int(seed), int(rank)
        self.start = int(start)

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        batches = GroupedBatchSampler(self.sampler, self.groups, self.batch_size)
        for k, batch in enumerate(batches):
            if k >= self.start:
                yield [(i, sample_seed(self.seed, self.rank, k, j)) for j, i in enumerate(batch)]
