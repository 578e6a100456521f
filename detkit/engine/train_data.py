"""A training stream that is a pure function of (seed, rank, world size, iteration).

``--resume`` must continue with exactly the batches, and the exact augmentations, the uninterrupted
run would have seen. Two things make that so:

* the index stream (detkit.data's seeded, sharded ``TrainingSampler`` + aspect-ratio
  ``GroupedBatchSampler``) is skipped forward to the resume point on indices alone, without
  reading a single image;
* every sample carries its own augmentation seed, derived from (seed, rank, batch number, position),
  and the mapper is re-seeded with it just before the sample is drawn, so the augmentation does not
  depend on which loader worker drew it, nor on how many samples that worker drew before.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, List, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from detkit.data import collate
from detkit.data.samplers import GroupedBatchSampler, TrainingSampler, aspect_ratio_groups

logger = logging.getLogger("detkit")


def sample_seed(seed: int, rank: int, batch: int, position: int) -> int:
    return int(np.random.SeedSequence([seed, rank, batch, position]).generate_state(1)[0])


def _mappers(dataset: Any) -> list:
    subs = getattr(dataset, "datasets", [dataset])  # a DatasetUnion holds several
    return [d.mapper for d in subs if hasattr(getattr(d, "mapper", None), "set_seed")]


class SeededSamples(Dataset):
    """``dataset[(index, seed)]``: re-seed the augmentation, then return ``dataset[index]``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.mappers = _mappers(dataset)

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
        self.batch_size, self.seed, self.rank, self.start = (
            int(batch_size),
            int(seed),
            int(rank),
            int(start),
        )

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        batches = GroupedBatchSampler(self.sampler, self.groups, self.batch_size)
        for k, batch in enumerate(batches):
            if k >= self.start:
                yield [(i, sample_seed(self.seed, self.rank, k, j)) for j, i in enumerate(batch)]


def build_resumable_loader(
    dataset: Any,
    *,
    batch_size: int,
    seed: int,
    rank: int,
    world_size: int,
    start_batch: int = 0,
    num_workers: int = 0,
    group_by_aspect_ratio: bool = True,
) -> DataLoader:
    """An endless DataLoader of batches (lists of samples) that starts at micro-batch ``start_batch``."""
    sampler = ResumableBatchSampler(
        dataset,
        batch_size,
        seed=seed,
        rank=rank,
        world_size=world_size,
        start=start_batch,
        group_by_aspect_ratio=group_by_aspect_ratio,
    )
    generator = torch.Generator()
    generator.manual_seed(
        sample_seed(seed, rank, 2**31, 0)
    )  # worker seeds: not from the global RNG
    if start_batch:
        logger.info("data: continuing the training stream at batch %d (rank %d)", start_batch, rank)
    return DataLoader(
        SeededSamples(dataset),
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        generator=generator,
    )
