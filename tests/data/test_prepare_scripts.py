"""The preparation scripts in datasets/ (loaded as modules and run through their ``main``)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from detkit.data import COCODataset, VOCDataset, write_voc_xml
from detkit.data.voc import VOC_CLASSES

from .helpers import write_jpeg

SCRIPTS = Path(__file__).resolve().parents[2] / "datasets"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"detkit_script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_synthetic(tmp_path):
    ann_file = _script("prepare_synthetic").main(
        [
            "--out",
            str(tmp_path),
            "--split",
            "val",
            "--num-images",
            "3",
            "--num-classes",
            "4",
            "--min-size",
            "64",
            "--max-size",
            "80",
            "--voc",
        ]
    )
    assert ann_file == tmp_path / "val" / "annotations.json"
    ds = COCODataset(str(ann_file), str(tmp_path / "val" / "JPEGImages"))
    assert len(ds) == 3 and ds.class_names == ["circle", "rectangle", "triangle", "star"]
    assert all(64 <= r["height"] <= 80 and 64 <= r["width"] <= 80 for r in ds.records)
    assert (tmp_path / "val" / "ImageSets" / "Main" / "val.txt").read_text().split() == [
        "000001",
        "000002",
        "000003",
    ]


@pytest.mark.parametrize(
    "difficult, crowd, boxes", [("crowd", [0, 1], 2), ("keep", [0, 0], 2), ("drop", [0], 1)]
)
def test_prepare_voc_to_coco(tmp_path, difficult, crowd, boxes):
    voc = tmp_path / "VOC2007"
    write_jpeg(voc / "JPEGImages" / "000005.jpg", 60, 40)
    write_voc_xml(
        voc / "Annotations" / "000005.xml",
        "000005.jpg",
        60,
        40,
        np.array([[0, 1, 10, 20], [4, 5, 60, 40]]),
        [VOC_CLASSES.index("cat"), 0],
        VOC_CLASSES,
        difficult=[False, True],
    )
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "test.txt").write_text("000005\n")
    out = tmp_path / "annotations" / "voc07_test.json"
    _script("prepare_voc_to_coco").main(
        ["--voc-root", str(voc), "--split", "test", "--out", str(out), "--difficult", difficult]
    )
    coco = json.loads(out.read_text())
    assert coco["images"] == [{"id": 5, "file_name": "000005.jpg", "height": 40, "width": 60}]
    assert [a["iscrowd"] for a in coco["annotations"]] == crowd
    assert coco["annotations"][0]["bbox"] == [0, 1, 10, 19]  # VOC xmin=1 ymin=2 xmax=10 ymax=20
    assert [c["name"] for c in coco["categories"]] == list(VOC_CLASSES)
    # and back: the COCO file loads with the same boxes as the VOC folder
    via_coco = COCODataset(str(out), str(voc / "JPEGImages"))
    direct = VOCDataset(str(voc), "test", keep_difficult=difficult != "drop")
    got = np.concatenate([via_coco.records[0]["boxes"], via_coco.records[0]["crowd_boxes"]])
    np.testing.assert_allclose(got, direct.records[0]["boxes"])
    assert len(got) == boxes
