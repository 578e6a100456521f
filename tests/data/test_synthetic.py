"""Synthetic dataset: determinism, round trip through COCO JSON (and VOC XML), tight boxes, caching."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest

from detkit.data import COCODataset, SyntheticDataset, VOCDataset, generate_synthetic
from detkit.data.synthetic import generate_image, synthetic_class_names
from detkit.data.synthetic_draw import CLASSES, _Canvas, draw_image

SMALL = {"num_images": 6, "num_classes": 6, "image_size": (64, 96)}


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_or_split_differs(tmp_path):
    generate_synthetic(tmp_path / "a", seed=3, **SMALL)
    generate_synthetic(tmp_path / "b", seed=3, **SMALL)
    generate_synthetic(tmp_path / "c", seed=4, **SMALL)
    generate_synthetic(tmp_path / "d", seed=3, split="val", **SMALL)
    a = _files(tmp_path / "a")
    assert a == _files(tmp_path / "b") and len(a) == 6 + 2  # images, annotations.json, .complete
    assert a != _files(tmp_path / "c")
    assert a[next(iter(a))] != _files(tmp_path / "d")[next(iter(a))]


def test_round_trip_through_coco_json(tmp_path):
    ds = SyntheticDataset(str(tmp_path / "synth"), seed=1, split="train", **SMALL)
    assert ds.class_names == ["circle", "rectangle", "triangle", "star", "cross", "ring"]
    assert ds.evaluator_type == "coco" and ds.label_to_category_id == [1, 2, 3, 4, 5, 6]
    assert ds.ann_file == str(tmp_path / "synth" / "train" / "annotations.json")
    for i, record in enumerate(ds.records):
        image, boxes, labels = generate_image(
            i, seed=1, split="train", num_classes=6, image_size=(64, 96)
        )
        assert (
            record["image_id"] == i + 1 and (record["height"], record["width"]) == image.shape[:2]
        )
        np.testing.assert_array_equal(record["boxes"], boxes)
        np.testing.assert_array_equal(record["labels"], labels)
        decoded = ds[i]["image"].permute(1, 2, 0).numpy()  # JPEG: close, not equal
        assert np.abs(decoded.astype(float) - image).mean() < 12


def test_round_trip_through_voc_xml(tmp_path):
    SyntheticDataset(str(tmp_path), seed=2, split="val", write_voc=True, **SMALL)
    coco = COCODataset(
        str(tmp_path / "val" / "annotations.json"), str(tmp_path / "val" / "JPEGImages")
    )
    voc = VOCDataset(str(tmp_path / "val"), "val", class_names=synthetic_class_names(6))
    assert [r["image_id"] for r in voc.records] == [r["image_id"] for r in coco.records]
    for a, b in zip(coco.records, voc.records):
        np.testing.assert_array_equal(
            a["boxes"], b["boxes"]
        )  # integer pixel boxes survive 1-based XML
        np.testing.assert_array_equal(a["labels"], b["labels"])


def test_boxes_are_tight_around_visible_pixels():
    canvas = _Canvas(np.zeros((50, 50, 3), np.uint8))
    square = np.ones((10, 10), bool)
    first = canvas.try_place(square, 25, 25)
    canvas.paint(first, np.full((10, 10, 3), 200.0))
    assert canvas.boxes() == [[20, 20, 30, 30]]
    # a 10x4 bar over the top 4 rows of the square: the square's visible box shrinks to rows 24..29
    second = canvas.try_place(np.ones((4, 10), bool), 25, 22)
    canvas.paint(second, np.full((4, 10, 3), 50.0))
    assert canvas.boxes() == [[20, 24, 30, 30], [20, 20, 30, 24]]
    # covering more than half of the square is refused
    assert canvas.try_place(np.ones((8, 12), bool), 25, 28) is None
    assert canvas.try_place(np.ones((9, 9), bool), -3, 25) is None  # mostly outside the image


def test_statistics_over_many_images():
    sizes, labels, counts = [], [], []
    for i in range(40):
        rng = np.random.default_rng([7, i])
        image, boxes, lab = draw_image(160, 200, 10, rng)
        assert image.dtype == np.uint8 and image.shape == (160, 200, 3)
        assert (
            (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 200).all() and (boxes[:, 3] <= 160).all()
        )
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        sizes += np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).tolist()
        labels += lab.tolist()
        counts.append(len(lab))
    assert min(sizes) <= 12 and max(sizes) >= 0.45 * 160  # small to large
    assert set(labels) == set(range(len(CLASSES)))
    assert max(counts) >= 5


def test_generated_once_then_reused_and_regenerated_on_change(tmp_path, caplog):
    folder = tmp_path / "train"
    generate_synthetic(folder, **SMALL)
    stamp = (folder / "annotations.json").stat().st_mtime_ns
    generate_synthetic(folder, **SMALL)
    assert (folder / "annotations.json").stat().st_mtime_ns == stamp
    (folder / ".complete").unlink()  # an interrupted run: no marker, so it is generated again
    generate_synthetic(folder, **SMALL)
    assert (folder / ".complete").exists()
    with caplog.at_level(logging.WARNING, logger="detkit"):
        generate_synthetic(folder, **{**SMALL, "num_images": 3})
    assert "regenerating" in caplog.text
    assert len(COCODataset(str(folder / "annotations.json"), str(folder / "JPEGImages"))) == 3


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_classes must be in 1..10"):
        SyntheticDataset(str(tmp_path), num_classes=11, num_images=1)
    with pytest.raises(ValueError, match="image_size"):
        SyntheticDataset(str(tmp_path), image_size=(300, 200), num_images=1)


def test_generation_logs_its_count_and_speed(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="detkit"):
        generate_synthetic(tmp_path, num_images=4, image_size=(64, 96))
    (line,) = [m for m in caplog.messages if m.startswith("generated synthetic train split")]
    match = re.search(r": 4 images, \d+ boxes in [\d.]+ s .* ([\d.]+) ms/image\)$", line)
    assert match and float(match.group(1)) > 0, line
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="detkit"):
        generate_synthetic(tmp_path, num_images=4, image_size=(64, 96))  # complete: nothing to do
    assert not [m for m in caplog.messages if m.startswith("generated synthetic")]


@pytest.mark.slow
def test_parallel_generation_writes_the_same_files(tmp_path):
    args = dict(SMALL, num_images=20, seed=5, write_voc=True)
    generate_synthetic(tmp_path / "one", workers=1, **args)
    generate_synthetic(tmp_path / "two", workers=2, **args)
    one = _files(tmp_path / "one")
    assert len(one) == 20 + 20 + 3  # images, XML, annotations.json, split list, .complete
    assert one == _files(tmp_path / "two")  # same bytes, with the paths made relative in the JSON
