"""VOC XML parsing (1-based -> 0-based, difficult, missing difficult) and VOCDataset on a folder."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

from detkit.data import VOCDataset, parse_voc_xml, write_voc_xml
from detkit.data.voc import VOC_CLASSES, voc_image_ids
from detkit.errors import DataError
from tests.helpers import reference_data

from .helpers import write_jpeg

XML_MISSING_DIFFICULT = """<annotation>
  <filename>000009.jpg</filename>
  <size><width>60</width><height>40</height><depth>3</depth></size>
  <object><name>cat</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>10</xmax><ymax>20</ymax></bndbox></object>
  <object><name>dog</name><difficult>1</difficult>
    <bndbox><xmin>5.0</xmin><ymin>6</ymin><xmax>60</xmax><ymax>40</ymax></bndbox></object>
</annotation>
"""


def test_standard_class_order():
    assert (
        len(VOC_CLASSES) == 20 and VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[-1] == "tvmonitor"
    )
    assert VOC_CLASSES.index("person") == 14


def test_parse_mmdetection_voc_xml():
    ann = parse_voc_xml(
        reference_data(
            "mmdetection", "tests", "data", "VOCdevkit", "VOC2012", "Annotations", "000001.xml"
        )
    )
    assert (ann["width"], ann["height"]) == (335, 500)
    np.testing.assert_allclose(
        ann["boxes"], [[138, 199, 207, 301]]
    )  # xmin 139 ymin 200 xmax 207 ymax 301
    assert ann["labels"].tolist() == [VOC_CLASSES.index("train")] and ann["difficult"].tolist() == [
        False
    ]


def test_parse_custom_dataset_xml_with_two_objects():
    ann = parse_voc_xml(
        reference_data("mmdetection", "tests", "data", "custom_dataset", "images", "000001.xml")
    )
    np.testing.assert_allclose(ann["boxes"], [[47, 239, 195, 371], [7, 11, 352, 498]])
    assert ann["labels"].tolist() == [VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")]


def test_missing_difficult_means_zero_and_float_coordinates(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(XML_MISSING_DIFFICULT)
    ann = parse_voc_xml(path)
    assert ann["difficult"].tolist() == [False, True]
    np.testing.assert_allclose(ann["boxes"], [[0, 1, 10, 20], [4, 5, 60, 40]])


def test_unknown_class_and_broken_xml_name_the_file(tmp_path):
    path = tmp_path / "b.xml"
    path.write_text(XML_MISSING_DIFFICULT.replace("<name>cat</name>", "<name>kat</name>"))
    with pytest.raises(DataError, match=r"b.xml: unknown class name 'kat'"):
        parse_voc_xml(path)
    path.write_text("<annotation><object>")
    with pytest.raises(DataError, match="cannot parse VOC annotation .*b.xml"):
        parse_voc_xml(path)


def test_write_then_parse_round_trip(tmp_path):
    boxes = np.array([[0, 1, 10, 20], [4, 5, 60, 40]], np.float32)
    write_voc_xml(
        tmp_path / "r.xml", "r.jpg", 60, 40, boxes, [7, 11], VOC_CLASSES, difficult=[False, True]
    )
    ann = parse_voc_xml(tmp_path / "r.xml")
    np.testing.assert_allclose(ann["boxes"], boxes)
    assert ann["labels"].tolist() == [7, 11] and ann["difficult"].tolist() == [False, True]
    assert "<xmin>1</xmin>" in (tmp_path / "r.xml").read_text()  # written back 1-based


def test_image_ids():
    assert voc_image_ids(["000005", "2008_000002"]) == [5, 2008000002]
    assert voc_image_ids(["a", "b"]) == [1, 2]


@pytest.fixture
def voc_folder(tmp_path):
    """VOCdevkit/VOC2007 with the reference XML (copied to tmp), a hand-written one, images and a split."""
    root = tmp_path / "VOCdevkit" / "VOC2007"
    (root / "Annotations").mkdir(parents=True)
    shutil.copy(
        reference_data(
            "mmdetection", "tests", "data", "VOCdevkit", "VOC2012", "Annotations", "000001.xml"
        ),
        root / "Annotations" / "000001.xml",
    )
    (root / "Annotations" / "000009.xml").write_text(XML_MISSING_DIFFICULT)
    write_jpeg(root / "JPEGImages" / "000001.jpg", 335, 500)
    write_jpeg(root / "JPEGImages" / "000009.jpg", 60, 40)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n000009\n")
    return tmp_path


def test_voc_dataset(voc_folder):
    ds = VOCDataset("VOCdevkit", "trainval", year=2007, data_root=str(voc_folder))
    assert ds.evaluator_type == "voc" and ds.year == 2007 and ds.class_names == list(VOC_CLASSES)
    assert [r["image_id"] for r in ds.records] == [1, 9]
    r = ds.records[1]
    assert (r["height"], r["width"]) == (40, 60) and r["difficult"].tolist() == [False, True]
    assert r["file_name"].endswith("VOC2007/JPEGImages/000009.jpg")
    sample = ds[0]
    assert sample["image"].shape == (3, 500, 335)
    easy = VOCDataset(str(voc_folder / "VOCdevkit" / "VOC2007"), "trainval", keep_difficult=False)
    assert easy.records[1]["labels"].tolist() == [VOC_CLASSES.index("cat")] and easy.year == 2007


def test_voc_missing_split_and_annotation(voc_folder):
    with pytest.raises(
        DataError, match=r"split file for split 'test' not found: .*ImageSets/Main/test.txt"
    ):
        VOCDataset(str(voc_folder / "VOCdevkit" / "VOC2007"), "test")
    with pytest.raises(DataError, match=r"VOC folder not found: .*VOC2012.*datasets/README.md"):
        VOCDataset(str(voc_folder / "VOCdevkit"), "trainval", year=2012)
    (voc_folder / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "val.txt").write_text("000404\n")
    with pytest.raises(DataError, match="VOC annotation not found: .*000404.xml"):
        VOCDataset(str(voc_folder / "VOCdevkit" / "VOC2007"), "val")


def test_voc_missing_image_files_are_named_when_loaded(voc_folder, caplog):
    root = voc_folder / "VOCdevkit" / "VOC2007"
    (root / "JPEGImages" / "000009.jpg").unlink()
    with pytest.raises(DataError) as info:
        VOCDataset(str(root), "trainval")
    assert str(info.value) == (
        f"1 of 2 image files listed in {root} trainval do not exist: "
        f"{root}/JPEGImages/000009.jpg (image id 9); "
        "data.skip_broken_images=true skips unreadable images"
    )
    with caplog.at_level(logging.WARNING, logger="detkit"):
        ds = VOCDataset(str(root), "trainval", skip_broken=True)
    assert len(ds) == 2 and ds[1] is None
    assert any("000009.jpg (image id 9)" in r.getMessage() for r in caplog.records)
