"""The only place where the config turns into datasets, mappers and loaders.

``cfg`` is detkit's Config (attribute access) or a plain nested dict; dataset entries are plain dicts
``{name: <registered dataset>, **constructor kwargs}``.
"""

from __future__ import annotations

import bisect
import difflib
import inspect
import logging
import pickle
from collections.abc import Mapping
from typing import Any, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader

from detkit.data.common import DATASETS_README
from detkit.data.samplers import (
    InferenceSampler,
    ResumableBatchSampler,
    SeededSamples,
    sample_seed,
)
from detkit.data.transforms import InferenceMapper, TrainMapper
from detkit.errors import DataError, DetkitError
from detkit.registry import DATASETS
from detkit.utils.distributed import rank_and_world_size

logger = logging.getLogger("detkit")

_SPLITS = ("train", "val", "test")
_MISSING = object()


def _get(node: Any, key: str, default: Any = _MISSING) -> Any:
    """``node.key`` or ``node[key]``; ``default`` when absent (an error without one)."""
    if isinstance(node, Mapping):
        if key in node:
            return node[key]
    elif hasattr(node, key):
        return getattr(node, key)
    if default is _MISSING:
        raise KeyError(f"config has no key {key!r}")
    return default


def collate(batch: Sequence[Optional[dict]]) -> List[dict]:
    """A batch is a plain list of samples; ``None`` (an image skipped as broken) is left out."""
    return [sample for sample in batch if sample is not None]


# ------------------------------------------------------------------ user errors in loader workers
# DataLoader re-raises a worker's exception as ``type(err)("Caught X in DataLoader worker process
# N.\nOriginal Traceback ...")``: a one-line "image file not found: ... (image id 4 in ...)" turns
# into a traceback inside the message. So a worker returns a user error as data instead of raising
# it; the error object itself crosses the process boundary (pickled, like a sample) and the loader
# raises it unchanged in the main process, where the tools print it as one line.


class _FailedSample:
    """A user error (``DetkitError``) raised while a worker read a sample, travelling as a sample."""

    def __init__(self, error: Exception):
        try:
            pickle.loads(pickle.dumps(error))
        except Exception:  # an error type that cannot be rebuilt from its pickle keeps its text
            error = DataError(f"{type(error).__name__}: {error}")
        self.error = error


class _ReturnUserErrors(torch.utils.data.Dataset):
    """``dataset[item]``, or a :class:`_FailedSample` when reading it raised a user error."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        try:
            return self.dataset[item]
        except DetkitError as err:
            return _FailedSample(err)


class Loader(DataLoader):
    """A DataLoader that raises its workers' user errors as themselves (see ``_FailedSample``)."""

    def __init__(self, dataset, **kwargs):
        workers = int(kwargs.get("num_workers", 0))
        super().__init__(_ReturnUserErrors(dataset) if workers > 0 else dataset, **kwargs)

    def __iter__(self):
        batches = super().__iter__()
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            failed = next((s for s in batch if isinstance(s, _FailedSample)), None)
            if failed is not None:
                # the last reference to a non-persistent iterator: its workers stop now, not when
                # the garbage collector reaches the traceback
                del batches
                raise failed.error
            yield batch


class DatasetUnion(torch.utils.data.Dataset):
    """Several datasets with the same classes read as one (e.g. VOC07 trainval + VOC12 trainval)."""

    def __init__(self, datasets: Sequence[Any], names: Optional[Sequence[str]] = None):
        if not datasets:
            raise DataError("a dataset union needs at least one dataset")
        names = list(names) if names is not None else [repr(d) for d in datasets]
        first = datasets[0]
        for d, name in zip(datasets[1:], names[1:]):
            if list(d.class_names) != list(first.class_names):
                raise DataError(
                    f"cannot combine {names[0]} and {name}: their class names differ "
                    f"({list(first.class_names)} vs {list(d.class_names)})"
                )
        self.datasets, self.names = list(datasets), names
        self.class_names = list(first.class_names)
        self.records = [r for d in self.datasets for r in d.records]
        self._ends = np.cumsum([len(d) for d in self.datasets]).tolist()
        types = {getattr(d, "evaluator_type", None) for d in self.datasets}
        self.evaluator_type = types.pop() if len(types) == 1 else None
        maps = {tuple(getattr(d, "label_to_category_id", ())) for d in self.datasets}
        if len(maps) == 1 and hasattr(first, "label_to_category_id"):
            self.label_to_category_id = list(first.label_to_category_id)
        ids = [r["image_id"] for r in self.records]
        if len(set(ids)) != len(ids):
            logger.warning(
                "the union of %s has repeated image ids: fine for training, ambiguous for "
                "evaluation",
                names,
            )

    @property
    def ann_file(self) -> str:
        raise AttributeError(
            f"a union of {len(self.datasets)} datasets has no single ann_file "
            f"({self.names}); evaluate each dataset separately"
        )

    def __len__(self) -> int:
        return self._ends[-1]

    def __getitem__(self, index: int):
        k = bisect.bisect_right(self._ends, index)
        start = self._ends[k - 1] if k else 0
        return self.datasets[k][index - start]

    def __repr__(self) -> str:
        return f"DatasetUnion({self.names})"


def build_mapper(cfg: Any, is_train: bool):
    """TrainMapper / InferenceMapper from ``cfg.input``."""
    inp = _get(cfg, "input")
    if is_train:
        return TrainMapper(
            min_sizes=_get(inp, "min_size_train"),
            max_size=_get(inp, "max_size_train"),
            hflip_prob=_get(inp, "hflip_prob", 0.5),
            color_jitter=_get(inp, "color_jitter", 0.0),
            seed=int(_get(_get(cfg, "solver", {}), "seed", 0)),
            rounding=_get(inp, "resize_rounding", "floor"),
        )
    return InferenceMapper(
        min_size=_get(inp, "min_size_test"),
        max_size=_get(inp, "max_size_test"),
        rounding=_get(inp, "resize_rounding", "floor"),
    )


def _constructor_params(cls) -> List[str]:
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "mapper")]


def _hint(name: str, choices: List[str]) -> str:
    """ "; did you mean 'x'?" for the closest choice, ignoring case."""
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1)
    return f"; did you mean '{lowered[close[0]]}'?" if close else ""


def _check_entry(entry: Any, where: str):
    if not isinstance(entry, Mapping) or "name" not in entry:
        raise DataError(
            f"{where} must be a mapping with a 'name' key (a registered dataset: "
            f"{list(DATASETS)}), got {entry!r}"
        )
    if entry["name"] not in DATASETS:
        raise DataError(
            f"{where}: unknown dataset '{entry['name']}'; registered: {list(DATASETS)}"
            f"{_hint(str(entry['name']), list(DATASETS))}"
        )
    cls = DATASETS.get(entry["name"])
    kwargs = {k: v for k, v in entry.items() if k != "name"}
    valid = _constructor_params(cls)
    for key in kwargs:
        if key not in valid:
            raise DataError(
                f"{where}: unknown argument '{key}' for {entry['name']}; "
                f"valid arguments: {valid}{_hint(key, valid)}"
            )
    required = [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.default is inspect.Parameter.empty
        and p.name not in ("self", "mapper")
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    missing = [p for p in required if p not in kwargs]
    if missing:
        raise DataError(f"{where}: {entry['name']} needs argument(s) {missing}")
    return cls, kwargs, valid


def _build_one(entry: dict, where: str, defaults: dict, mapper, exif: bool):
    cls, kwargs, valid = _check_entry(entry, where)
    data_root_param = getattr(cls, "data_root_param", None)
    for key, value in defaults.items():
        key = data_root_param if key == "data_root" else key
        if key in valid and key not in kwargs and value is not None:
            kwargs[key] = value
    dataset = cls(mapper=mapper, **kwargs)
    dataset.exif = exif
    return dataset


def build_dataset(cfg: Any, split: str):
    """The dataset (or union) configured under ``cfg.data.<split>.datasets`` with its mapper.

    Training datasets get ``data.train.filter_empty`` and a TrainMapper; val/test keep every image
    and get an InferenceMapper. ``data.root`` fills each dataset's data-root argument when set.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    data = _get(cfg, "data")
    split_cfg = _get(data, split)
    entries = list(_get(split_cfg, "datasets", []))
    if not entries:
        raise DataError(
            f"no datasets configured under data.{split}.datasets; add entries like "
            f"{{name: COCODataset, ann_file: ..., img_dir: ...}} (see {DATASETS_README})"
        )
    is_train = split == "train"
    defaults = {
        "data_root": _get(data, "root", "") or None,
        "skip_broken": bool(_get(data, "skip_broken_images", False)),
        "filter_empty": bool(_get(split_cfg, "filter_empty", False)) if is_train else None,
    }
    mapper = build_mapper(cfg, is_train)
    exif = bool(_get(_get(cfg, "input"), "exif", True))
    datasets, names = [], []
    for i, entry in enumerate(entries):
        where = f"data.{split}.datasets[{i}]"
        datasets.append(_build_one(dict(entry), where, defaults, mapper, exif))
        names.append(f"{where} {datasets[-1]!r}")
    dataset = datasets[0] if len(datasets) == 1 else DatasetUnion(datasets, names)
    if len(dataset) == 0:
        raise DataError(f"data.{split}.datasets gives no images ({names})")
    logger.info("%s dataset: %d images, %d classes", split, len(dataset), len(dataset.class_names))
    return dataset


def build_train_loader(
    cfg: Any,
    dataset,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    *,
    start_batch: int = 0,
) -> Loader:
    """An endless iterable of micro-batches (lists of samples) of
    ``solver.ims_per_batch // (world_size * solver.accumulate)`` images, starting at ``start_batch``.

    A pure function of (``solver.seed``, rank, world size, batch number): the image order is shared
    by all ranks and sharded, each sample carries its own augmentation seed, and ``start_batch`` skips
    ahead on indices alone, so a resumed run sees exactly the batches of an uninterrupted one.
    """
    rank, world_size = rank_and_world_size(rank, world_size)
    solver, data = _get(cfg, "solver"), _get(cfg, "data")
    total, accumulate = int(_get(solver, "ims_per_batch")), int(_get(solver, "accumulate", 1))
    if total % (world_size * accumulate):
        raise ValueError(
            f"solver.ims_per_batch={total} is not divisible by the number of processes "
            f"({world_size}) x solver.accumulate ({accumulate})"
        )
    seed = int(_get(solver, "seed", 0))
    sampler = ResumableBatchSampler(
        dataset,
        total // (world_size * accumulate),
        seed=seed,
        rank=rank,
        world_size=world_size,
        start=start_batch,
        group_by_aspect_ratio=bool(_get(data, "aspect_ratio_grouping", True)),
    )
    generator = torch.Generator()  # the workers' seeds derive from it, not from the global RNG
    generator.manual_seed(sample_seed(seed, rank, 2**31, 0))
    if start_batch:
        logger.info("data: continuing the training stream at batch %d (rank %d)", start_batch, rank)
    workers = int(_get(data, "num_workers", 0))
    return Loader(
        SeededSamples(dataset),
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        generator=generator,
    )


def build_test_loader(
    cfg: Any, dataset, rank: Optional[int] = None, world_size: Optional[int] = None
) -> Loader:
    """Each image exactly once over all ranks, in dataset order, ``test.ims_per_batch`` per rank.
    ``auto`` is made concrete by the inference layer (``detkit.inference.parallel.with_test_batch``:
    the images run side by side on the CPU); a config that reaches here with ``auto`` batches one
    image."""
    sampler = InferenceSampler(len(dataset), *rank_and_world_size(rank, world_size))
    batch_size = _get(_get(cfg, "test", {}), "ims_per_batch", 1)
    batch_size = 1 if batch_size == "auto" else int(batch_size)
    batch_sampler = BatchSampler(sampler, batch_size, drop_last=False)
    return Loader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=int(_get(_get(cfg, "data"), "num_workers", 0)),
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
    )
