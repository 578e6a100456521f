"""The fast COCO engine equals pycocotools on random and hand-built cases (all 12 numbers and the
full precision/recall arrays, to 1e-9)."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools.cocoeval import Params
from synthetic_coco import make_case

from detkit.evaluation.coco import evaluate_pycocotools
from detkit.evaluation.coco_io import load_coco_gt, results_to_detections
from detkit.evaluation.fast_coco import (
    AREA_RANGES,
    IOU_THRESHOLDS,
    MAX_DETS,
    RECALL_THRESHOLDS,
    evaluate_fast,
    pairwise_iou,
)


def assert_engines_agree(gt, dets, img_ids=None):
    ground, detections = load_coco_gt(gt), results_to_detections(dets, "test")
    fast = evaluate_fast(ground, detections, img_ids)
    ref = evaluate_pycocotools(ground, detections, img_ids)
    np.testing.assert_allclose(fast.stats, ref.stats, rtol=0, atol=1e-9)
    np.testing.assert_allclose(fast.precision, ref.precision, rtol=0, atol=1e-9)
    np.testing.assert_allclose(fast.recall, ref.recall, rtol=0, atol=1e-9)
    return fast


def test_parameters_are_pycocotools_own():
    p = Params(iouType="bbox")
    assert np.array_equal(IOU_THRESHOLDS, p.iouThrs) and np.array_equal(
        RECALL_THRESHOLDS, p.recThrs
    )
    assert list(MAX_DETS) == p.maxDets and np.array_equal(AREA_RANGES, np.array(p.areaRng))


CASES = [  # n_images, n_cats, gt_per_image, dets_per_image, crowd_frac, empty_frac, score_decimals
    (12, 3, 5, 20, 0.0, 0.0, 3),
    (20, 4, 6, 30, 0.2, 0.2, 2),
    (8, 1, 10, 110, 0.1, 0.0, 2),  # > 100 detections per (image, category): maxDets truncation
    (15, 5, 3, 60, 0.3, 0.5, 1),  # many ties in score, many images without ground truth
    (25, 6, 8, 40, 0.05, 0.1, 3),
    (5, 2, 12, 150, 0.5, 0.0, 1),  # crowd-heavy, long detection lists
    (30, 8, 2, 5, 0.1, 0.3, 2),  # sparse
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_cases_match_pycocotools(case, seed):
    keys = (
        "n_images",
        "n_cats",
        "gt_per_image",
        "dets_per_image",
        "crowd_frac",
        "empty_frac",
        "score_decimals",
    )
    gt, dets = make_case(
        np.random.default_rng(1000 * seed + CASES.index(case)), **dict(zip(keys, case))
    )
    assert_engines_agree(gt, dets)


def _gt(boxes, cats=(1,), crowd=None, areas=None, image_ids=(1,), box_images=None):
    box_images = box_images or [image_ids[0]] * len(boxes)
    crowd = crowd or [0] * len(boxes)
    areas = areas or [b[2] * b[3] for b in boxes]
    return {
        "images": [{"id": i} for i in image_ids],
        "categories": [{"id": c, "name": f"c{c}"} for c in cats],
        "annotations": [
            {"id": k + 1, "image_id": i, "category_id": cats[0], "bbox": b, "area": a, "iscrowd": z}
            for k, (i, b, a, z) in enumerate(zip(box_images, boxes, areas, crowd))
        ],
    }


def _det(box, score, image_id=1, cat=1):
    return {"image_id": image_id, "category_id": cat, "bbox": box, "score": score}


def test_crowd_absorbs_many_detections_and_is_ignored():
    gt = _gt([[0, 0, 100, 100], [200, 200, 50, 50]], crowd=[1, 0])
    dets = [_det([10, 10, 50, 50], 0.9), _det([20, 20, 60, 60], 0.8), _det([200, 200, 50, 50], 0.7)]
    fast = assert_engines_agree(gt, dets)
    assert fast.stats[0] == pytest.approx(1.0)  # crowd matches are neither TP nor FP


def test_exact_half_iou_counts_at_threshold_half():
    # detection [0,0,10,20] vs ground truth [0,0,10,10]: IoU exactly 0.5 -> matched at t=0.5 (>=)
    fast = assert_engines_agree(_gt([[0, 0, 10, 10]]), [_det([0, 0, 10, 20], 0.9)])
    assert fast.precision[0, :, 0, 0, 2] == pytest.approx(1.0)  # 1 / (1 + eps)
    assert fast.precision[1, 0, 0, 0, 2] == 0.0


def test_tied_scores_and_equal_ious_follow_pycocotools_order():
    gt = _gt([[0, 0, 10, 10], [0, 0, 10, 10], [5, 0, 10, 10]])
    dets = [
        _det([0, 0, 10, 10], 0.5),
        _det([0, 0, 10, 10], 0.5),
        _det([2, 0, 10, 10], 0.5),
        _det([1, 0, 10, 10], 0.5),
    ]
    assert_engines_agree(gt, dets)


def test_images_with_detections_but_no_ground_truth_and_classes_without_detections():
    gt = _gt([[0, 0, 40, 40], [50, 50, 20, 20]], cats=(1, 2, 3), image_ids=(1, 2, 3))
    dets = [
        _det([0, 0, 40, 40], 0.9),
        _det([0, 0, 40, 40], 0.95, image_id=3),
        _det([0, 0, 40, 40], 0.3, image_id=2, cat=3),
    ]
    fast = assert_engines_agree(gt, dets)
    assert fast.precision[:, :, 1:, :, :].max() == -1  # categories 2, 3 have no ground truth


def test_class_with_ground_truth_but_no_detections_scores_zero():
    gt = _gt([[0, 0, 40, 40]], cats=(1, 2))
    gt["annotations"].append(
        {
            "id": 2,
            "image_id": 1,
            "category_id": 2,
            "bbox": [50, 50, 20, 20],
            "area": 400.0,
            "iscrowd": 0,
        }
    )
    fast = assert_engines_agree(gt, [_det([0, 0, 40, 40], 0.9)])
    assert fast.precision[:, :, 1, 0, 2].max() == 0.0 and fast.recall[:, 1, 0, 2].max() == 0.0
    assert fast.stats[0] == pytest.approx(0.5)


def test_area_comes_from_the_area_field_for_gt_and_the_box_for_detections():
    gt = _gt([[0, 0, 100, 100]], areas=[500.0])  # a "small" object with a large box
    fast = assert_engines_agree(gt, [_det([0, 0, 100, 100], 0.9), _det([300, 300, 5, 5], 0.8)])
    assert fast.stats[3] == pytest.approx(
        1.0
    )  # APs: the ground truth is small by its area field...
    assert fast.stats[5] == -1  # ...so there is no large ground truth, whatever its box says


def test_empty_results_and_image_subsets():
    gt, dets = make_case(np.random.default_rng(7), n_images=10, n_cats=3)
    fast = assert_engines_agree(gt, [])
    assert set(np.unique(fast.stats)) <= {0.0, -1.0}
    subset = [im["id"] for im in gt["images"][:4]]
    assert_engines_agree(gt, dets, img_ids=np.array(subset))


def test_pairwise_iou_matches_pycocotools_mask_iou():
    from pycocotools import mask

    rng = np.random.default_rng(3)
    d = np.round(rng.uniform(0, 50, (200, 4)), 1)
    g = np.round(rng.uniform(0, 50, (200, 4)), 1)
    crowd = rng.random(200) < 0.3
    ref = np.array(
        [
            mask.iou(d[i : i + 1].tolist(), g[i : i + 1].tolist(), [int(crowd[i])])[0, 0]
            for i in range(200)
        ]
    )
    assert np.array_equal(pairwise_iou(d, g, crowd), ref)


def test_batching_does_not_change_results(monkeypatch):
    import detkit.evaluation.fast_coco as fast_coco

    gt, dets = make_case(
        np.random.default_rng(11),
        n_images=10,
        n_cats=2,
        gt_per_image=8,
        dets_per_image=60,
        crowd_frac=0.2,
    )
    monkeypatch.setattr(fast_coco, "MATCH_CELLS", 30)  # many tiny matching batches
    monkeypatch.setattr(fast_coco, "PAIR_CHUNK", 5)  # many tiny IoU batches
    assert_engines_agree(gt, dets)
