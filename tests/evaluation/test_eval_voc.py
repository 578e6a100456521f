"""VOC AP: the devkit's rules, the reference 7-image case, the evaluator and devkit result files."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from reference_cases import (
    CASE_FOLDERS,
    EXPECTED_11PT,
    EXPECTED_AREA,
    devkit_box,
    read_case,
    write_devkit,
)

from detkit.evaluation import VOCEvaluator, class_average_precision, evaluate_voc_files
from detkit.evaluation.voc_devkit import parse_voc_xml


@pytest.mark.parametrize("folder", CASE_FOLDERS, ids=["review_odm", "odm"])
@pytest.mark.parametrize("iou", sorted(EXPECTED_11PT))
def test_reference_seven_image_case(testdata, folder, iou):
    gts, dets = read_case(testdata / folder[0], *folder[1:])
    names = sorted(gts)
    gt_img = np.array([names.index(k) for k, boxes in gts.items() for _ in boxes])
    gt_boxes = np.array([devkit_box(b) for boxes in gts.values() for b in boxes])
    assert len(gt_img) == 15 and len(dets) == 24
    args = (
        gt_img,
        gt_boxes,
        np.zeros(len(gt_img), bool),
        np.array([names.index(d[0]) for d in dets]),
        np.array([d[1] for d in dets]),
        np.array([devkit_box(d[2]) for d in dets]),
        iou,
    )
    assert class_average_precision(*args, use_07_metric=True) == pytest.approx(
        EXPECTED_11PT[iou], abs=1e-9
    )
    assert class_average_precision(*args, use_07_metric=False) == pytest.approx(
        EXPECTED_AREA[iou], abs=1e-9
    )


def test_devkit_result_files_reproduce_the_reference_case(testdata, tmp_path):
    gts, dets = read_case(testdata / CASE_FOLDERS[0][0], *CASE_FOLDERS[0][1:])
    root = write_devkit(
        tmp_path / "VOC2007", {k: [devkit_box(b) for b in v] for k, v in gts.items()}
    )
    results = tmp_path / "results"
    results.mkdir()
    (results / "comp4_det_test_person.txt").write_text(
        "".join(
            f"{img} {score} {' '.join(f'{v:g}' for v in devkit_box(box))}\n"
            for img, score, box in dets
        )
    )
    for iou, expected in EXPECTED_AREA.items():
        out = evaluate_voc_files(root, "test", results, class_names=["person"], iou_thresh=iou)
        assert out["mAP"] == pytest.approx(expected, abs=1e-9)
    out = evaluate_voc_files(root, "test", results, class_names=["person"], use_07_metric=True)
    assert out == {
        "mAP": pytest.approx(EXPECTED_11PT[0.5], abs=1e-9),
        "per_class": {"person": pytest.approx(EXPECTED_11PT[0.5], abs=1e-9)},
    }
    with pytest.raises(FileNotFoundError, match="comp4_det_test_dog.txt"):
        evaluate_voc_files(root, "test", results, class_names=["person", "dog"])


def test_evaluator_with_detkit_boxes_reproduces_the_reference_case(testdata):
    gts, dets = read_case(testdata / CASE_FOLDERS[0][0], *CASE_FOLDERS[0][1:])
    names = sorted(gts)

    def detkit(xywh):  # devkit (x1, y1, x2, y2) is detkit (x1 - 1, y1 - 1, x2, y2)
        x1, y1, x2, y2 = devkit_box(xywh)
        return [x1 - 1, y1 - 1, x2, y2]

    records = [
        {
            "image_id": i,
            "boxes": np.array([detkit(b) for b in gts[k]], np.float32),
            "labels": np.zeros(len(gts[k]), np.int64),
            "difficult": np.zeros(len(gts[k]), bool),
        }
        for i, k in enumerate(names)
    ]
    evaluator = VOCEvaluator(records, ["person"], use_07_metric=True, iou_thresh=0.3)
    for i, k in enumerate(names):
        mine = [d for d in dets if d[0] == k]
        evaluator.process(
            [{"image_id": i}],
            [
                {
                    "boxes": torch.tensor([detkit(d[2]) for d in mine]).reshape(-1, 4),
                    "scores": torch.tensor([d[1] for d in mine]),
                    "labels": torch.zeros(len(mine), dtype=torch.long),
                }
            ],
        )
    assert evaluator.evaluate()["mAP"] == pytest.approx(
        EXPECTED_11PT[0.3], abs=1e-7
    )  # float32 scores


def _evaluate(gt_boxes, det_boxes, scores, difficult=None, **kw):
    """One image, one class, detkit 0-based boxes."""
    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    difficult = np.zeros(len(gt_boxes), bool) if difficult is None else np.asarray(difficult)
    records = [
        {
            "image_id": 7,
            "boxes": gt_boxes,
            "labels": np.zeros(len(gt_boxes), np.int64),
            "difficult": difficult,
        }
    ]
    evaluator = VOCEvaluator(records, ["thing"], **kw)
    output = {
        "boxes": np.asarray(det_boxes, np.float32).reshape(-1, 4),
        "scores": np.asarray(scores),
        "labels": np.zeros(len(scores), int),
    }
    evaluator.process([{"image_id": 7}], [output])
    return evaluator.evaluate()["mAP"]


@pytest.mark.parametrize("use_07_metric", [True, False])
def test_perfect_detections_give_one(use_07_metric):
    boxes = [[0, 0, 10, 10], [20, 20, 50, 40], [5, 30, 9, 60]]
    assert _evaluate(boxes, boxes, [0.9, 0.8, 0.7], use_07_metric=use_07_metric) == 1.0


def test_exact_half_iou_strict_versus_greater_equal():
    # devkit boxes (1,1,10,10) and (1,1,10,20): 100 px inside 200 px -> IoU exactly 0.5
    assert _evaluate([[0, 0, 10, 10]], [[0, 0, 10, 20]], [0.9]) == 0.0
    assert _evaluate([[0, 0, 10, 10]], [[0, 0, 10, 20]], [0.9], iou_strict=False) == 1.0


def test_difficult_ground_truth_is_neither_tp_nor_fp(caplog):
    gts, difficult = [[0, 0, 10, 10], [50, 50, 80, 80]], [False, True]
    # the top-scored detection hits the difficult object: ignored, so AP stays 1
    assert _evaluate(gts, [[50, 50, 80, 80], [0, 0, 10, 10]], [0.9, 0.8], difficult) == 1.0
    with caplog.at_level(logging.WARNING, logger="detkit"):
        assert _evaluate([[0, 0, 10, 10]], [[0, 0, 10, 10]], [0.9], [True]) == -1.0
    assert "no (non-difficult) ground truth" in caplog.text


def test_duplicates_are_false_positives():
    gts = [[0, 0, 10, 10], [40, 40, 60, 60]]
    # A (TP), A again (FP), B (TP): recall .5 .5 1, precision 1 .5 2/3 -> AP .5 + .5 * 2/3
    assert _evaluate(
        gts, [[0, 0, 10, 10], [0, 0, 10, 10], [40, 40, 60, 60]], [0.9, 0.8, 0.7]
    ) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # the best ground truth is taken -> FP, even though another overlaps by IoU 0.75
    assert _evaluate(
        [[0, 0, 10, 10], [2, 0, 12, 10]], [[0, 0, 10, 10], [0, 0, 11, 10]], [0.9, 0.8]
    ) == pytest.approx(0.5)


def test_evaluator_rejects_unknown_and_repeated_images():
    records = [{"image_id": 1, "boxes": np.zeros((0, 4)), "labels": np.zeros(0, int)}]
    evaluator = VOCEvaluator(records, ["thing"])
    out = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)}
    evaluator.process([{"image_id": 2}], [out])
    with pytest.raises(ValueError, match="not in the dataset records: 2"):
        evaluator.evaluate()
    evaluator.reset()
    evaluator.process([{"image_id": 1}, {"image_id": 1}], [out, out])
    with pytest.raises(ValueError, match="processed more than once: 1"):
        evaluator.evaluate()


def test_parse_voc_xml_sample(testdata):
    objs = parse_voc_xml(
        testdata / "mmdetection/tests/data/VOCdevkit/VOC2012/Annotations/000001.xml"
    )
    assert objs == [{"name": "train", "difficult": False, "bbox": [139.0, 200.0, 207.0, 301.0]}]
    with pytest.raises(FileNotFoundError, match="missing.xml"):
        parse_voc_xml(testdata / "missing.xml")
