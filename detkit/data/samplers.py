"""Samplers: an infinite, sharded, seeded training stream with aspect-ratio grouped batches, and an
inference sampler that gives every image to exactly one rank.
"""

from __future__ import annotations

from typing import Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def dist_info(rank: Optional[int] = None, world_size: Optional[int] = None) -> Tuple[int, int]:
    """(rank, world_size): the given values, else torch.distributed's when initialised, else (0, 1)."""
    if rank is None or world_size is None:
        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank() if rank is None else rank
            world_size = dist.get_world_size() if world_size is None else world_size
        else:
            rank = 0 if rank is None else rank
            world_size = 1 if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(
            f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}"
        )
    return int(rank), int(world_size)


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
        self.rank, self.world_size = dist_info(rank, world_size)

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
        self.rank, self.world_size = dist_info(rank, world_size)
        base, extra = divmod(self.size, self.world_size)
        self.start = self.rank * base + min(self.rank, extra)
        self.end = self.start + base + (1 if self.rank < extra else 0)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.end))

    def __len__(self) -> int:
        return self.end - self.start
