"""COCODataset: records, label mapping, box cleaning, strict errors, reference files."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from detkit.data import COCODataset
from detkit.data.transforms import InferenceMapper
from detkit.errors import DataError
from tests.helpers import reference_data

from .helpers import write_coco, write_jpeg

CATS = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
IMAGES = [{"id": 5, "file_name": "x.jpg", "width": 100, "height": 50}]


def _ann(ann_id, bbox, category_id=1, image_id=5, **extra):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, **extra}


def test_tiny_coco_records_and_label_mapping(tiny_coco):
    ann_file, img_dir = tiny_coco
    ds = COCODataset(str(ann_file), str(img_dir))
    assert ds.class_names == ["cat", "dog"]  # sorted by category id (3, 7)
    assert ds.label_to_category_id == [3, 7]
    assert ds.evaluator_type == "coco" and ds.ann_file == str(ann_file)
    assert len(ds) == 3  # the empty image is kept without filter_empty
    r = ds.records[0]
    assert r["image_id"] == 1 and (r["height"], r["width"]) == (48, 64)
    assert r["file_name"] == str(img_dir / "1.jpg")
    np.testing.assert_allclose(r["boxes"], [[4, 5, 24, 15], [30, 10, 60, 40]])
    assert r["boxes"].dtype == np.float32 and r["labels"].dtype == np.int64
    np.testing.assert_array_equal(r["labels"], [1, 0])
    assert r["difficult"].dtype == np.bool_ and not r["difficult"].any()
    crowd = ds.records[1]
    np.testing.assert_allclose(crowd["boxes"], [[10, 20, 15, 26]])  # the crowd box is no positive
    np.testing.assert_allclose(crowd["crowd_boxes"], [[0, 0, 40, 80]])
    empty = ds.records[2]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)


def test_filter_empty_logs_the_count(tiny_coco, caplog):
    ann_file, img_dir = tiny_coco
    with caplog.at_level(logging.INFO, logger="detkit"):
        ds = COCODataset(str(ann_file), str(img_dir), filter_empty=True)
    assert [r["image_id"] for r in ds.records] == [1, 2]
    assert "filtered out 1 of 3 images" in caplog.text


def test_getitem_with_and_without_mapper(tiny_coco):
    ann_file, img_dir = tiny_coco
    raw = COCODataset(str(ann_file), str(img_dir))[0]
    assert raw["image"].dtype == torch.uint8 and raw["image"].shape == (3, 48, 64)
    assert raw["gt_boxes"].shape == (2, 4) and raw["gt_labels"].tolist() == [1, 0]
    sample = COCODataset(str(ann_file), str(img_dir), mapper=InferenceMapper(96, 1000))[0]
    assert sample["image"].shape == (3, 48, 64) and sample["scale"] == 2.0
    assert (sample["height"], sample["width"], sample["image_id"]) == (48, 64, 1)


def test_degenerate_and_outside_boxes_warn_once_each(tmp_path, caplog):
    anns = [
        _ann(11, [10, 10, 0, 5]),
        _ann(12, [10, 10, 5, -1]),
        _ann(13, [90, 40, 20, 20]),
        _ann(14, [-5, 0, 10, 10]),
        _ann(15, [200, 10, 5, 5]),
        _ann(16, [1, 1, 3, 3]),
        _ann(17, [0, 0, 100.004, 50]),
    ]
    ann_file = write_coco(tmp_path / "a.json", IMAGES, anns, CATS)
    write_jpeg(tmp_path / "x.jpg", 100, 50)
    with caplog.at_level(logging.WARNING, logger="detkit"):
        ds = COCODataset(str(ann_file), str(tmp_path))
    np.testing.assert_allclose(
        ds.records[0]["boxes"], [[90, 40, 100, 50], [0, 0, 5, 10], [1, 1, 4, 4], [0, 0, 100, 50]]
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for ann_id in (11, 12, 13, 14, 15):
        mine = [w for w in warnings if f"annotation id {ann_id}:" in w]
        assert len(mine) == 1 and "image id 5" in mine[0], (ann_id, warnings)
    assert not [w for w in warnings if "annotation id 16" in w or "annotation id 17" in w]


@pytest.mark.parametrize(
    "anns, message",
    [
        ([_ann(0, [1, 1, 2, 2])], "annotation id 0"),
        ([_ann(3, [1, 1, 2, 2]), _ann(3, [2, 2, 2, 2])], "duplicate annotation id 3"),
        ([_ann(4, [1, 1, 2, 2], category_id=9)], "annotation id 4 refers to unknown category id 9"),
        ([_ann(6, [1, 1, 2, 2], image_id=99)], "annotation id 6 refers to unknown image id 99"),
        (
            [{"id": 7, "image_id": 5, "category_id": 1}],
            r"annotation #0 \(id 7\) is missing key\(s\) \['bbox'\]",
        ),
        ([_ann(8, [1, 1, 2])], "annotation id 8: 'bbox' must be 4 finite numbers"),
    ],
)
def test_bad_annotations_are_errors_naming_file_and_id(tmp_path, anns, message):
    ann_file = write_coco(tmp_path / "bad.json", IMAGES, anns, CATS)
    with pytest.raises(DataError, match=message) as info:
        COCODataset(str(ann_file), str(tmp_path))
    assert str(ann_file) in str(info.value)


def test_malformed_json_and_missing_sections(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [}')
    with pytest.raises(DataError, match="broken.json is not valid JSON"):
        COCODataset(str(broken), str(tmp_path))
    no_images = tmp_path / "noimg.json"
    no_images.write_text(json.dumps({"annotations": [], "categories": CATS}))
    with pytest.raises(DataError, match="noimg.json: 'images' must be a list"):
        COCODataset(str(no_images), str(tmp_path))
    bad_image = write_coco(tmp_path / "badimg.json", [{"id": 1, "file_name": "a.jpg"}], [], CATS)
    with pytest.raises(
        DataError, match=r"image #0 \(id 1\) is missing key\(s\) \['height', 'width'\]"
    ):
        COCODataset(str(bad_image), str(tmp_path))


def test_missing_files_point_to_the_readme(tmp_path):
    with pytest.raises(DataError, match=f"not found: {tmp_path}/nope.json.*datasets/README.md"):
        COCODataset("nope.json", "imgs", root=str(tmp_path))


def test_relative_paths_resolve_against_env_var(tiny_coco, monkeypatch):
    ann_file, img_dir = tiny_coco
    monkeypatch.setenv("DETKIT_DATASETS", str(ann_file.parent))
    ds = COCODataset("ann.json", "images")
    assert ds.ann_file == str(ann_file) and len(ds) == 3


def test_image_size_mismatch_is_a_clear_error(tmp_path):
    write_jpeg(tmp_path / "x.jpg", 50, 100)  # the file is portrait, the annotation says landscape
    ds = COCODataset(str(write_coco(tmp_path / "a.json", IMAGES, [], CATS)), str(tmp_path))
    with pytest.raises(DataError, match=r"x.jpg \(image id 5\) is 50x100 .* says 100x50.*swapped"):
        ds[0]


def test_mmdetection_sample_files(tmp_path):
    data = reference_data("mmdetection", "tests", "data")
    for name in ("fake1.jpg", "fake2.jpg", "fake3.jpg"):  # the file lists images it does not hold
        (tmp_path / name).touch()
    ds = COCODataset(str(data / "coco_sample.json"), str(tmp_path))
    assert ds.class_names == ["bus", "car"] and len(ds) == 3
    assert [len(r["boxes"]) for r in ds.records] == [2, 1, 0]
    assert len(COCODataset(str(data / "coco_sample.json"), str(tmp_path), filter_empty=True)) == 2
    with pytest.raises(DataError, match="coco_wrong_format_sample.json: duplicate annotation id 1"):
        COCODataset(str(data / "coco_wrong_format_sample.json"), str(tmp_path))


def test_faster_coco_eval_fixture_reads_images():
    data = reference_data("faster_coco_eval", "tests", "dataset")
    ds = COCODataset(str(data / "gt_dataset.json"), str(data))
    assert ds.class_names == ["cloud", "heart", "arrow", "star"] and ds.label_to_category_id == [
        1,
        2,
        3,
        4,
    ]
    assert sum(len(r["boxes"]) for r in ds.records) == 9
    r = ds.records[0]
    assert r["file_name"].endswith("img_3.jpg")
    np.testing.assert_allclose(r["boxes"][0], [22, 24, 131, 135])  # [22, 24, 109, 111] as XYXY
    for i in range(len(ds)):
        sample = ds[i]
        assert sample["image"].shape == (3, 256, 256)


# -- image files checked when the dataset is loaded ----------------------------------------------
def test_missing_image_files_are_named_when_loaded(tiny_coco):
    ann_file, img_dir = tiny_coco
    for i in (1, 3):
        (img_dir / f"{i}.jpg").unlink()
    with pytest.raises(DataError) as info:
        COCODataset(str(ann_file), str(img_dir))
    assert str(info.value) == (
        f"2 of 3 image files listed in {ann_file} do not exist: {img_dir}/1.jpg (image id 1), "
        f"{img_dir}/3.jpg (image id 3); data.skip_broken_images=true skips unreadable images"
    )


def test_many_missing_image_files_give_a_count_and_the_first_five(tmp_path):
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 8, "height": 8} for i in range(1, 8)]
    ann_file = write_coco(tmp_path / "a.json", images, [], CATS)
    with pytest.raises(DataError) as info:
        COCODataset(str(ann_file), str(tmp_path))
    message = str(info.value)
    assert message.startswith(
        f"7 of 7 image files listed in {ann_file} do not exist: {tmp_path}/1.jpg (image id 1), "
    )
    assert message.endswith(
        f"{tmp_path}/5.jpg (image id 5) and 2 more (none of them does: is the image folder "
        f"{tmp_path} right?); data.skip_broken_images=true skips unreadable images"
    )
    assert "6.jpg" not in message


def test_skip_broken_images_warns_at_load_and_skips_the_file_when_read(tiny_coco, caplog):
    ann_file, img_dir = tiny_coco
    (img_dir / "2.jpg").unlink()
    with caplog.at_level(logging.WARNING, logger="detkit"):
        ds = COCODataset(str(ann_file), str(img_dir), skip_broken=True)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == (
        f"1 of 3 image files listed in {ann_file} do not exist: {img_dir}/2.jpg (image id 2); "
        "data.skip_broken_images=true: they are skipped when read"
    )
    assert len(ds) == 3 and ds[1] is None and ds[2]["image_id"] == 3
