"""VOC ground truth and devkit result files converted to the COCO structures the analysis uses."""

import shutil

import numpy as np
import pytest

from detkit.analysis.voc_input import load_voc_for_analysis
from detkit.errors import DataError
from detkit.evaluation.fast_coco import pairwise_iou
from detkit.evaluation.voc import voc_iou
from detkit.utils.voc_files import VOC_CLASSES
from tests.helpers import reference_data, write_jpeg


def obj(name, box, difficult=None):
    tag = "" if difficult is None else f"<difficult>{difficult}</difficult>"
    x1, y1, x2, y2 = box
    return (
        f"<object><name>{name}</name>{tag}<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
    )


def xml(objects, size=None):
    head = (
        "" if size is None else f"<size><width>{size[0]}</width><height>{size[1]}</height></size>"
    )
    return f"<annotation><filename>x.jpg</filename>{head}{''.join(objects)}</annotation>"


# (name, box x1 y1 x2 y2 1-based inclusive, difficult)
GT = {
    "000005": [("chair", (100, 200, 150, 260), 0), ("chair", (10, 20, 40, 60), 1)],
    "000007": [("cat", (1, 1, 50, 40), None), ("unicorn", (5, 5, 9, 9), 0)],
}


def make_voc(tmp_path, results=None, split="test"):
    """A VOC2007 folder with GT's two images (000007 without <size>: its JPEG gives it) and the
    result files of ``results`` {class: lines} (empty files for the other classes)."""
    root = tmp_path / "VOCdevkit" / "VOC2007"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("000005\n000007\n\n")
    for name, objects in GT.items():
        size = (353, 500) if name == "000005" else None
        text = xml([obj(n, b, d) for n, b, d in objects], size)
        (root / "Annotations" / f"{name}.xml").write_text(text)
    write_jpeg(root / "JPEGImages" / "000007.jpg", width=64, height=48)
    out = tmp_path / "results"
    out.mkdir()
    for cls in VOC_CLASSES:
        (out / f"comp4_det_test_{cls}.txt").write_text("\n".join((results or {}).get(cls, [])))
    return root, out


def test_ground_truth_boxes_difficult_and_images(tmp_path, detkit_log):
    root, out = make_voc(tmp_path)
    gt, dets = load_voc_for_analysis(root, "test", out)
    assert dets.size == 0
    images = gt.dataset["images"]
    assert [im["id"] for im in images] == [5, 7] and gt.image_ids.tolist() == [5, 7]
    assert [im["voc_id"] for im in images] == ["000005", "000007"]
    assert images[0]["file_name"] == str(root.absolute() / "JPEGImages" / "000005.jpg")
    assert (images[0]["width"], images[0]["height"]) == (353, 500)
    assert (images[1]["width"], images[1]["height"]) == (64, 48)  # from the JPEG
    cats = gt.dataset["categories"]
    assert [c["name"] for c in cats] == list(VOC_CLASSES) and [c["id"] for c in cats] == list(
        range(1, 21)
    )
    assert all("supercategory" not in c for c in cats)
    chair, cat = VOC_CLASSES.index("chair") + 1, VOC_CLASSES.index("cat") + 1
    # the unicorn is not a VOC class: left out, with a warning
    assert gt.ann_image_id.tolist() == [5, 5, 7]
    assert gt.ann_category_id.tolist() == [chair, chair, cat]
    assert gt.ann_bbox.tolist() == [[99, 199, 51, 61], [9, 19, 31, 41], [0, 0, 50, 40]]
    assert gt.ann_area.tolist() == [51 * 61, 31 * 41, 50 * 40]
    assert gt.ann_ignore.tolist() == [False, True, False]  # difficult; no <difficult> tag = 0
    assert gt.ann_crowd.tolist() == [False, False, False]
    assert [a["id"] for a in gt.dataset["annotations"]] == [1, 2, 3]
    assert "unicorn (1)" in detkit_log.text
    assert "2 images, 3 objects (1 difficult), 0 detections" in detkit_log.text


def test_detections_and_iou_equal_the_devkit(tmp_path):
    rng = np.random.default_rng(0)
    lines, devkit = {"chair": [], "cat": []}, []
    for k in range(60):
        image = ["000005", "000007"][k % 2]
        cls = "chair" if image == "000005" else "cat"
        base = np.array([b for n, b, _ in GT[image] if n == cls][0])
        box = base + rng.integers(-12, 13, 4)
        box[2:] = np.maximum(box[2:], box[:2])  # one-pixel boxes included
        score = round(float(rng.random()), 6)
        lines[cls].append(f"{image} {score} " + " ".join(str(v) for v in box))
        devkit.append((image, cls, score, box.astype(float)))
    root, out = make_voc(tmp_path, lines)
    gt, dets = load_voc_for_analysis(root, "test", out)
    assert dets.size == 60
    # detections come per class in the class order, each file's lines in order
    order = [d for c in VOC_CLASSES for d in devkit if d[1] == c]
    ids = {"000005": 5, "000007": 7}
    assert dets.image_id.tolist() == [ids[d[0]] for d in order]
    assert dets.category_id.tolist() == [VOC_CLASSES.index(d[1]) + 1 for d in order]
    assert dets.score.tolist() == [d[2] for d in order]
    boxes = np.array([d[3] for d in order])
    assert np.array_equal(dets.bbox[:, :2], boxes[:, :2] - 1)
    assert np.array_equal(dets.bbox[:, 2:], boxes[:, 2:] - boxes[:, :2] + 1)
    # every (detection, object) pair of an image: pycocotools' IoU on the converted boxes is the
    # devkit's inclusive IoU on the original ones
    gt_devkit = {
        (ids[image], k): np.array(b, float)
        for image, objects in GT.items()
        for k, (n, b, _) in enumerate(o for o in objects if o[0] in VOC_CLASSES)
    }
    gt_rows = {key: row for row, key in enumerate(gt_devkit)}
    d_idx, g_idx = zip(
        *[
            (i, gt_rows[key])
            for i in range(dets.size)
            for key in gt_devkit
            if key[0] == dets.image_id[i]
        ]
    )
    d_idx, g_idx = np.array(d_idx), np.array(g_idx)
    ours = pairwise_iou(dets.bbox[d_idx], gt.ann_bbox[g_idx], np.zeros(len(d_idx), bool))
    theirs = voc_iou(boxes[d_idx], np.array(list(gt_devkit.values()))[g_idx])
    assert np.array_equal(ours, theirs)
    assert (ours > 0).sum() > 30 and (ours > 0.5).any()


def test_reference_annotation(tmp_path):
    """mmdetection's VOC sample annotation (a train at 139,200 - 207,301 in a 335 x 500 image)."""
    sample = reference_data(
        "mmdetection", "tests", "data", "VOCdevkit", "VOC2012", "Annotations", "000001.xml"
    )
    root = tmp_path / "VOC2012"
    (root / "Annotations").mkdir(parents=True)
    shutil.copy(sample, root / "Annotations" / "000001.xml")
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "val.txt").write_text("000001\n")
    results = tmp_path / "res"
    results.mkdir()
    for cls in VOC_CLASSES:
        text = "000001 0.9 139 200 207 301\n000001 0.4 150 210 220 300\n" if cls == "train" else ""
        (results / f"r_{cls}.txt").write_text(text)
    gt, dets = load_voc_for_analysis(root, "val", results, prefix="r_")
    (image,) = gt.dataset["images"]
    assert image["id"] == 1 and (image["width"], image["height"]) == (335, 500)
    assert gt.ann_bbox.tolist() == [[138, 199, 69, 102]] and gt.ann_area.tolist() == [69 * 102]
    assert gt.ann_ignore.tolist() == [False]
    assert dets.bbox.tolist() == [[138, 199, 69, 102], [149, 209, 71, 91]]
    iou = pairwise_iou(dets.bbox, np.repeat(gt.ann_bbox, 2, axis=0), np.zeros(2, bool))
    devkit = voc_iou(
        np.array([[139, 200, 207, 301], [150, 210, 220, 300]], float),
        np.array([[139, 200, 207, 301]] * 2, float),
    )
    assert iou[0] == 1.0 and np.array_equal(iou, devkit)


def test_errors_name_the_file_and_what_is_expected(tmp_path):
    root, out = make_voc(tmp_path)
    with pytest.raises(DataError, match=r"VOC folder not found: .*nope .*Annotations"):
        load_voc_for_analysis(tmp_path / "nope", "test", out)
    with pytest.raises(
        DataError, match=r"VOC split file not found: .*val\.txt.*splits in .*: test"
    ):
        load_voc_for_analysis(root, "val", out)
    with pytest.raises(DataError, match=r"VOC results folder not found: .*missing.*<class>\.txt"):
        load_voc_for_analysis(root, "test", tmp_path / "missing")
    (out / "comp4_det_test_dog.txt").unlink()
    with pytest.raises(DataError, match=r"no result file for 1 of 20 classes: comp4_det_test_dog"):
        load_voc_for_analysis(root, "test", out)
    with pytest.raises(DataError, match=r"no result file for 20 of 20 .*comp5_det_test_"):
        load_voc_for_analysis(root, "test", out, prefix="comp5_det_test_")
    (out / "comp4_det_test_dog.txt").write_text("000005 0.5 1 2 3\n")
    with pytest.raises(DataError, match=r"comp4_det_test_dog\.txt:1: expected 'image_id score"):
        load_voc_for_analysis(root, "test", out)
    (out / "comp4_det_test_dog.txt").write_text("000009 0.5 1 2 3 4\n")
    with pytest.raises(DataError, match=r"comp4_det_test_dog\.txt: image ids not in .*000009"):
        load_voc_for_analysis(root, "test", out)
    (root / "Annotations" / "000007.xml").write_text("<annotation><object>")
    with pytest.raises(DataError, match=r"000007\.xml is not valid XML"):
        load_voc_for_analysis(root, "test", out)
    (root / "Annotations" / "000007.xml").unlink()
    with pytest.raises(DataError, match=r"VOC annotation not found: .*000007\.xml .*'test'"):
        load_voc_for_analysis(root, "test", out)
    shutil.rmtree(root / "Annotations")
    with pytest.raises(DataError, match=r"has no Annotations folder"):
        load_voc_for_analysis(root, "test", out)
