"""build_dataset / loaders: config entries, unions, errors, batching, broken images in workers."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import pytest
import torch

from detkit.data import DatasetUnion, build_dataset, build_test_loader, build_train_loader
from detkit.data.build import Loader, collate
from detkit.data.transforms import InferenceMapper, TrainMapper
from detkit.errors import DataError

from .helpers import make_cfg, write_coco


def _entry(tiny_coco, **extra):
    ann_file, img_dir = tiny_coco
    return {"name": "COCODataset", "ann_file": str(ann_file), "img_dir": str(img_dir), **extra}


def _namespace(d):
    """Attribute access like detkit's Config, with dataset entries left as plain dicts."""
    if isinstance(d, dict) and "datasets" not in d:
        return SimpleNamespace(**{k: _namespace(v) for k, v in d.items()})
    if isinstance(d, dict):
        return SimpleNamespace(**d)
    return d


def test_train_and_val_datasets(tiny_coco):
    cfg = make_cfg(train=[_entry(tiny_coco)], val=[_entry(tiny_coco)])
    train = build_dataset(_namespace(cfg), "train")
    assert len(train) == 2 and isinstance(train.mapper, TrainMapper)  # filter_empty from data.train
    val = build_dataset(cfg, "val")
    assert len(val) == 3 and isinstance(val.mapper, InferenceMapper)
    assert val[0]["image"].shape == (3, 48, 64) and val[0]["scale"] == pytest.approx(32 / 48)


def test_union_of_two_entries_and_data_root(tiny_coco):
    ann_file, img_dir = tiny_coco
    relative = {"name": "COCODataset", "ann_file": ann_file.name, "img_dir": img_dir.name}
    cfg = make_cfg(train=[_entry(tiny_coco), relative], data={"root": str(ann_file.parent)})
    union = build_dataset(cfg, "train")
    assert (
        isinstance(union, DatasetUnion) and len(union) == 4 and union.class_names == ["cat", "dog"]
    )
    assert [r["image_id"] for r in union.records] == [1, 2, 1, 2]
    assert union[3]["gt_labels"].tolist() == [1] and union.evaluator_type == "coco"
    with pytest.raises(AttributeError, match="no single ann_file"):
        _ = union.ann_file


def test_union_with_different_classes_names_both(tiny_coco, tmp_path):
    other = write_coco(tmp_path / "other.json", [], [], [{"id": 1, "name": "car"}])
    cfg = make_cfg(
        train=[
            _entry(tiny_coco),
            {"name": "COCODataset", "ann_file": str(other), "img_dir": str(tmp_path)},
        ]
    )
    cfg["data"]["train"]["filter_empty"] = False
    with pytest.raises(
        DataError,
        match=r"cannot combine data.train.datasets\[0\].*and "
        r"data.train.datasets\[1\].*class names differ",
    ):
        build_dataset(cfg, "train")


@pytest.mark.parametrize(
    "entry, message",
    [
        (
            {"name": "COCODataset", "ann_fle": "a.json", "img_dir": "x"},
            r"datasets\[0\]: unknown argument 'ann_fle' for COCODataset; valid arguments: .*did you mean 'ann_file'",
        ),
        (
            {"name": "COCODataset", "img_dir": "x"},
            r"COCODataset needs argument\(s\) \['ann_file'\]",
        ),
        (
            {"name": "CocoDataset"},
            r"datasets\[0\]: unknown dataset 'CocoDataset'.*did you mean 'COCODataset'",
        ),
        ({"ann_file": "a.json"}, "must be a mapping with a 'name' key"),
        (
            {"name": "VOCDataset", "root": "x", "split": "train", "mapper": None},
            "unknown argument 'mapper'",
        ),
    ],
)
def test_bad_entries(entry, message):
    with pytest.raises(DataError, match=message):
        build_dataset(make_cfg(train=[entry]), "train")


def test_no_datasets_configured():
    with pytest.raises(DataError, match=r"no datasets configured under data.val.datasets.*README"):
        build_dataset(make_cfg(), "val")


def test_with_detkit_config(tiny_coco):
    config = pytest.importorskip("detkit.config")
    cfg = config.Config(
        {
            "data": {"train": {"datasets": [_entry(tiny_coco)]}},
            "input": {"min_size_train": [32], "max_size_train": 64},
        }
    )
    assert len(build_dataset(cfg, "train")) == 2


def test_train_loader_batches_are_endless_grouped_and_seeded(tiny_coco):
    cfg = make_cfg(train=[_entry(tiny_coco)], solver={"ims_per_batch": 4})
    dataset = build_dataset(cfg, "train")  # image 1 landscape, image 2 portrait

    def batches(rank, world_size):
        loader = build_train_loader(cfg, dataset, rank=rank, world_size=world_size)
        return list(itertools.islice(iter(loader), 5))

    first = batches(0, 2)
    assert all(len(b) == 2 for b in first)  # ims_per_batch // world_size
    for batch in first:
        assert len({s["image_id"] for s in batch}) == 1  # one orientation per batch
        assert all(
            s["gt_boxes"].dtype == torch.float32 and s["image"].dtype == torch.uint8 for s in batch
        )
    again = batches(0, 2)
    assert [[s["image_id"] for s in b] for b in first] == [
        [s["image_id"] for s in b] for b in again
    ]
    assert all(
        torch.equal(a["gt_boxes"], b["gt_boxes"])
        for x, y in zip(first, again)
        for a, b in zip(x, y)
    )
    with pytest.raises(ValueError, match="not divisible"):
        build_train_loader(cfg, dataset, rank=0, world_size=3)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_test_loader_predicts_each_image_once(tiny_coco, world_size):
    cfg = make_cfg(val=[_entry(tiny_coco)], test={"ims_per_batch": 2})
    dataset = build_dataset(cfg, "val")
    seen = []
    for rank in range(world_size):
        for batch in build_test_loader(cfg, dataset, rank=rank, world_size=world_size):
            assert 1 <= len(batch) <= 2
            seen += [s["image_id"] for s in batch]
    assert sorted(seen) == [1, 2, 3]


def test_test_loader_batches_one_image_for_an_unresolved_auto(tiny_coco):
    # the inference layer turns auto into the images its predictor runs side by side; a config
    # that reaches the loader unresolved predicts one image per call
    cfg = make_cfg(val=[_entry(tiny_coco)], test={"ims_per_batch": "auto"})
    loader = build_test_loader(cfg, build_dataset(cfg, "val"), rank=0, world_size=1)
    assert [len(batch) for batch in loader] == [1, 1, 1]


def _break_image(tiny_coco):
    ann_file, img_dir = tiny_coco
    (img_dir / "2.jpg").write_bytes(b"not a jpeg at all")
    return img_dir / "2.jpg"


def test_broken_image_in_a_worker_names_the_file(tiny_coco):
    broken = _break_image(tiny_coco)
    cfg = make_cfg(val=[_entry(tiny_coco)], data={"num_workers": 1})
    batches = iter(build_test_loader(cfg, build_dataset(cfg, "val"), rank=0, world_size=1))
    try:
        assert [s["image_id"] for s in next(batches)] == [1]
        with pytest.raises(OSError, match=f"cannot identify image file {broken}"):
            next(batches)
    finally:
        batches.close()  # stops the workers now (else torch waits 5 s when the garbage collector finds them)


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_image_error_is_the_error_itself(tiny_coco, workers):
    # with workers, DataLoader would re-raise "Caught DataError in DataLoader worker process 0"
    # plus a traceback as the message; the loader raises the worker's error unchanged instead
    broken = _break_image(tiny_coco)
    cfg = make_cfg(val=[_entry(tiny_coco)], data={"num_workers": workers})
    batches = iter(build_test_loader(cfg, build_dataset(cfg, "val"), rank=0, world_size=1))
    try:
        next(batches)
        with pytest.raises(DataError) as info:
            next(batches)
    finally:
        batches.close()
    assert str(info.value) == (
        f"cannot identify image file {broken}: not an image, a format Pillow cannot read, or "
        f"corrupted (image id 2 in {tiny_coco[0]}); data.skip_broken_images=true skips "
        "unreadable images"
    )


def test_missing_images_fail_the_build_unless_skip_broken_images(tiny_coco):
    (tiny_coco[1] / "3.jpg").unlink()
    with pytest.raises(DataError, match=r"1 of 3 image files .*3\.jpg \(image id 3\)"):
        build_dataset(make_cfg(val=[_entry(tiny_coco)]), "val")
    cfg = make_cfg(val=[_entry(tiny_coco)], data={"skip_broken_images": True})
    assert len(build_dataset(cfg, "val")) == 3  # the file is skipped when read, as before


def test_an_image_gone_after_loading_is_named_from_a_worker(tiny_coco):
    cfg = make_cfg(train=[_entry(tiny_coco)], data={"num_workers": 1}, solver={"ims_per_batch": 2})
    dataset = build_dataset(cfg, "train")
    (tiny_coco[1] / "1.jpg").unlink()  # e.g. a network share that lost it during the run
    batches = iter(build_train_loader(cfg, dataset, rank=0, world_size=1))
    try:
        with pytest.raises(DataError, match=r"^image file not found: .*1\.jpg \(image id 1 in "):
            for _ in range(4):  # two images, batches of two: image 1 comes in the first batch
                next(batches)
    finally:
        batches.close()


class _KeywordOnlyError(DataError):
    def __init__(self, *, path):
        super().__init__(f"cannot read {path}")


def test_a_worker_error_that_cannot_be_unpickled_keeps_its_message():
    class Dataset(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            raise _KeywordOnlyError(path="/x/1.jpg")

    loader = Loader(Dataset(), batch_size=1, num_workers=1, collate_fn=collate)
    with pytest.raises(DataError, match=r"^_KeywordOnlyError: cannot read /x/1.jpg$"):
        next(iter(loader))


def test_skip_broken_counts_and_skips(tiny_coco, caplog):
    _break_image(tiny_coco)
    cfg = make_cfg(
        train=[_entry(tiny_coco)], val=[_entry(tiny_coco)], data={"skip_broken_images": True}
    )
    val = build_dataset(cfg, "val")
    ids = [s["image_id"] for b in build_test_loader(cfg, val, rank=0, world_size=1) for s in b]
    assert (
        ids == [1, 3] and val.num_skipped == 1 and "skipping broken image (1 so far" in caplog.text
    )
    train = build_dataset(cfg, "train")
    assert train[1]["image_id"] == 1  # a training set substitutes the next readable image


def test_synthetic_entry_resolves_under_data_root(tmp_path):
    entry = {
        "name": "SyntheticDataset",
        "root": "synth",
        "num_images": 4,
        "image_size": [64, 96],
        "split": "val",
    }
    cfg = make_cfg(val=[entry], data={"root": str(tmp_path)})
    ds = build_dataset(cfg, "val")
    assert len(ds) == 4 and (tmp_path / "synth" / "val" / "annotations.json").exists()
    assert json.loads((tmp_path / "synth" / "val" / ".complete").read_text())["num_images"] == 4


def test_train_loader_with_workers_is_deterministic(tiny_coco):
    cfg = make_cfg(train=[_entry(tiny_coco)], data={"num_workers": 2}, solver={"ims_per_batch": 1})
    dataset = build_dataset(cfg, "train")

    def boxes():
        batches = iter(build_train_loader(cfg, dataset, rank=0, world_size=1))
        out = [b[0]["gt_boxes"] for b in itertools.islice(batches, 8)]
        del batches
        return out

    first, second = boxes(), boxes()
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    # hflip_prob 0.5: over 8 samples both flipped and unflipped boxes occur
    assert len({tuple(b[0].tolist()) for b in first}) > 2
