"""detkit's TIDE error breakdown equals tidecv 1.0.1 (the reference implementation) on the real
COCO sample, on a random set with every kind of error, and on hand-built cases with known answers."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from detkit.analysis.tide import MAIN_ERRORS, SPECIAL_ERRORS, tide_errors
from detkit.errors import ConfigError, DataError
from detkit.evaluation.coco_io import load_coco_gt, load_coco_results, results_to_detections
from tests.helpers import reference_data

ATOL = 1e-9  # AP points; only the order of the sum over classes differs from tidecv


def run_detkit(gt, results, **kw):
    return tide_errors(load_coco_gt(gt), results_to_detections(*load_coco_results(results)), **kw)


def run_tidecv(gt_path, results_path, pos_thresh=0.5, bg_thresh=0.1):
    """tidecv's (ap50, main, special, errors); it prints, so its stdout is swallowed."""
    tidecv = pytest.importorskip("tidecv")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = tidecv.datasets.COCO(str(gt_path))
        preds = tidecv.datasets.COCOResult(str(results_path))
        tide = tidecv.TIDE(pos_threshold=pos_thresh, background_threshold=bg_thresh)
        run = tide.evaluate(gt, preds, mode=tidecv.TIDE.BOX)
        found = tide.get_all_errors()
    name = next(iter(found["main"]))
    errors = []
    for e in run.errors:
        pred = getattr(e, "pred", None)
        target = getattr(e, "gt", None)
        if e.short_name == "Dupe":  # tidecv keeps the detection that took the object instead
            target = gt.annotations[e.suppressor["matched_with"]]
        errors.append(
            (
                e.short_name,
                (pred or target)["image"],
                None if pred is None else pred["score"],
                None if pred is None else list(pred["bbox"]),
                None if pred is None else pred["class"],
                None if target is None else list(target["bbox"]),
                None if target is None else target["class"],
            )
        )
    return run.ap, found["main"][name], found["special"][name], errors


def assert_same_as_tidecv(gt_path, results_path, **thresholds):
    ap, main, special, ref_errors = run_tidecv(gt_path, results_path, **thresholds)
    out = run_detkit(gt_path, results_path, **thresholds)
    assert out["ap50"] == pytest.approx(ap, abs=ATOL)
    for name in MAIN_ERRORS:
        assert out["main"][name] == pytest.approx(main[name], abs=ATOL), name
    for name in SPECIAL_ERRORS:
        assert out["special"][name] == pytest.approx(special[name], abs=ATOL), name
    mine = [
        (
            r["type"],
            r["image_id"],
            r["score"],
            r["det_box"],
            r["det_category_id"],
            # tidecv names no object for Both and Bkg
            r["gt_box"] if r["type"] not in ("Both", "Bkg") else None,
            r["gt_category_id"] if r["type"] not in ("Both", "Bkg") else None,
        )
        for r in out["errors"]
    ]
    assert mine == ref_errors
    counts = {name: sum(e[0] == name for e in ref_errors) for name in MAIN_ERRORS}
    assert out["counts"] == counts
    json.dumps(out)  # plain Python values only
    return out


def write_case(tmp_path, images, anns, cats, results, name="case"):
    """COCO files that tidecv can read too (it wants segmentations and file names)."""
    images = [{"file_name": f"{im['id']}.jpg", "width": 640, "height": 480, **im} for im in images]
    anns = [
        {
            "id": n + 1,
            "area": a["bbox"][2] * a["bbox"][3],
            "iscrowd": 0,
            "segmentation": [_polygon(a["bbox"])],
            **a,
        }
        for n, a in enumerate(anns)
    ]
    cats = [{"id": c, "name": f"c{c}"} for c in cats]
    gt_path, res_path = tmp_path / f"{name}_gt.json", tmp_path / f"{name}_res.json"
    gt_path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    res_path.write_text(json.dumps(results))
    return gt_path, res_path


def _polygon(b):
    x, y, w, h = b
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def det(image_id, category_id, bbox, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


def random_case(rng, n_images=300, n_cats=6):
    """Noisy copies of the objects (duplicates, poor boxes, swapped classes), background boxes,
    crowd regions, tied scores and IoUs, images without objects, images with more than 100
    detections, a class without ground truth, shuffled image and annotation order."""
    ids = (rng.permutation(n_images) * 3 + 7).tolist()
    images = [{"id": i} for i in ids]
    cats = [int(c) for c in sorted(rng.choice(90, n_cats, replace=False) + 1)]
    anns, results = [], []
    for i in ids:
        n_gt = int(rng.integers(0, 9)) if rng.random() > 0.1 else 0
        xy = rng.integers(0, 400, (n_gt, 2))
        wh = rng.integers(4, 200, (n_gt, 2))
        boxes = np.concatenate([xy, wh], 1).astype(float)
        labels = rng.integers(0, n_cats - 1, n_gt)  # the last class has no ground truth
        for box, lab in zip(boxes, labels):
            crowd = int(rng.random() < 0.07)
            anns.append(
                {"image_id": i, "category_id": cats[lab], "bbox": box.tolist(), "iscrowd": crowd}
            )
        n_det = int(rng.integers(0, 30)) if rng.random() > 0.05 else 130
        for _ in range(n_det):
            if n_gt and rng.random() < 0.7:
                j = int(rng.integers(n_gt))
                box = boxes[j].copy()
                mode = rng.random()
                if mode < 0.3:  # integer shifts: exact IoU ties and IoUs on the thresholds
                    box[rng.integers(4)] += rng.integers(-40, 41)
                elif mode < 0.8:
                    box += rng.normal(0, rng.uniform(0.02, 0.6), 4) * np.r_[box[2:], box[2:]]
                box[2:] = np.maximum(box[2:], 1)
                lab = labels[j] if rng.random() < 0.75 else rng.integers(n_cats)
            else:
                box = np.r_[rng.uniform(0, 400, 2), rng.uniform(4, 200, 2)]
                lab = rng.integers(n_cats)
            score = float(np.round(rng.random(), 2))
            results.append(det(i, cats[int(lab)], [float(v) for v in box], score))
    rng.shuffle(anns)
    return images, anns, cats, results


def test_tide_equals_tidecv_on_coco_sample():
    gt = reference_data(
        "faster_coco_eval", "tests", "dataset", "cocoapi", "instances_val2014_100.json"
    )
    res = reference_data("cocoapi", "results", "instances_val2014_fakebbox100_results.json")
    out = assert_same_as_tidecv(gt, res)
    assert out["ap50"] > 0 and out["main"]["Cls"] > 0 and out["main"]["Miss"] > 0
    assert len(out["true_positives"]) > 0


# bg_thresh 0: a Loc error may then point at an object of another class (and is fixed in its own)
@pytest.mark.parametrize(
    "seed, pos, bg", [(0, 0.5, 0.1), (1, 0.5, 0.1), (2, 0.3, 0.0), (3, 0.7, 0.2)]
)
def test_tide_equals_tidecv_on_random_set(tmp_path, seed, pos, bg):
    case = random_case(np.random.default_rng(seed))
    out = assert_same_as_tidecv(*write_case(tmp_path, *case), pos_thresh=pos, bg_thresh=bg)
    assert any(r["ignored"] for r in out["errors"])
    if bg > 0:  # the random set really exercises every error type
        assert all(out["counts"][name] > 0 for name in MAIN_ERRORS), out["counts"]


A, B = 1, 2


def test_duplicate_is_dupe_only(tmp_path):
    images = [{"id": 1}]
    anns = [
        {"image_id": 1, "category_id": A, "bbox": [10, 10, 50, 50]},
        {"image_id": 1, "category_id": A, "bbox": [200, 200, 50, 50]},
    ]
    results = [
        det(1, A, [10, 10, 50, 50], 0.9),
        det(1, A, [11, 10, 50, 50], 0.8),  # the same object again
        det(1, A, [200, 200, 50, 50], 0.7),
    ]
    out = assert_same_as_tidecv(*write_case(tmp_path, images, anns, [A, B], results))
    # precision 1 up to recall 0.5 (51 points), then 2/3
    assert out["ap50"] == pytest.approx((51 + 50 * 2 / 3) / 101 * 100, abs=1e-12)
    assert out["main"]["Dupe"] == pytest.approx(100 - out["ap50"], abs=1e-12)
    assert all(out["main"][n] == 0 for n in MAIN_ERRORS if n != "Dupe")
    assert [r["type"] for r in out["errors"]] == ["Dupe"]
    assert out["errors"][0]["gt_box"] == [10, 10, 50, 50]
    assert [t["score"] for t in out["true_positives"]] == [0.9, 0.7]


def test_wrong_class_is_cls(tmp_path):
    images = [{"id": 1}]
    anns = [{"image_id": 1, "category_id": A, "bbox": [10, 10, 50, 50]}]
    results = [det(1, B, [10, 10, 50, 50], 0.9)]
    out = assert_same_as_tidecv(*write_case(tmp_path, images, anns, [A, B], results))
    # class A: AP 0 (missed); B: AP 0 (no ground truth). Fixed, the box is A's true positive and
    # B drops out of the mean; the object is not also a miss.
    assert out["ap50"] == 0
    assert out["main"] == {"Cls": 100.0, "Loc": 0, "Both": 0, "Dupe": 0, "Bkg": 0, "Miss": 0}
    (err,) = out["errors"]
    assert err["type"] == "Cls" and err["det_category_id"] == B and err["gt_category_id"] == A


def test_poor_box_is_loc_and_unfound_object_is_miss(tmp_path):
    images = [{"id": 1}, {"id": 2}]
    anns = [
        {"image_id": 1, "category_id": A, "bbox": [0, 0, 100, 100]},
        {"image_id": 2, "category_id": A, "bbox": [0, 0, 100, 100]},
        {"image_id": 2, "category_id": A, "bbox": [300, 300, 20, 20]},
    ]
    results = [
        det(1, A, [0, 0, 100, 100], 0.9),
        det(2, A, [0, 0, 100, 30], 0.8),  # IoU 0.3
    ]
    out = assert_same_as_tidecv(*write_case(tmp_path, images, anns, [A], results))
    assert out["ap50"] == pytest.approx(34 / 101 * 100, abs=1e-12)  # recall 1/3, precision 1
    assert out["main"]["Loc"] == pytest.approx(67 / 101 * 100 - out["ap50"], abs=1e-12)
    assert out["main"]["Miss"] == pytest.approx(51 / 101 * 100 - out["ap50"], abs=1e-12)
    assert [r["type"] for r in out["errors"]] == ["Loc", "Miss"]
    assert out["errors"][1]["gt_box"] == [300, 300, 20, 20] and out["errors"][1]["score"] is None


def test_class_without_ground_truth_counts_as_zero(tmp_path):
    images = [{"id": 1}]
    anns = [{"image_id": 1, "category_id": A, "bbox": [10, 10, 50, 50]}]
    results = [det(1, A, [10, 10, 50, 50], 0.9), det(1, B, [300, 300, 40, 40], 0.5)]
    out = assert_same_as_tidecv(*write_case(tmp_path, images, anns, [A, B], results))
    # B's only box is background: AP 0 in the mean; removing it drops B from the mean
    assert out["ap50"] == pytest.approx(50)
    assert out["main"]["Bkg"] == pytest.approx(50)
    assert out["errors"][0]["type"] == "Bkg" and out["errors"][0]["gt_box"] is None


def test_crowd_region_and_ann_ignore(tmp_path):
    images = [{"id": 1}]
    anns = [
        {"image_id": 1, "category_id": A, "bbox": [0, 0, 50, 50]},
        {"image_id": 1, "category_id": A, "bbox": [100, 100, 200, 200], "iscrowd": 1},
    ]
    results = [
        det(1, A, [150, 150, 40, 40], 0.95),  # inside the crowd region: left out of the AP
        det(1, A, [0, 0, 50, 50], 0.8),
    ]
    gt_path, res_path = write_case(tmp_path, images, anns, [A], results)
    out = assert_same_as_tidecv(gt_path, res_path)
    assert out["ap50"] == 100 and all(v == 0 for v in out["main"].values())
    (err,) = out["errors"]
    assert err["ignored"] and err["type"] == "Bkg"

    # the same region flagged through ann_ignore instead of iscrowd gives the same breakdown
    gt = load_coco_gt(gt_path)
    gt.ann_ignore, gt.ann_crowd = gt.ann_crowd.copy(), np.zeros_like(gt.ann_crowd)
    flagged = tide_errors(gt, results_to_detections(*load_coco_results(res_path)))
    assert flagged == out


def test_empty_detections():
    gt = {
        "images": [{"id": 1}, {"id": 2}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": A, "bbox": [0, 0, 10, 10], "area": 100},
            {"id": 2, "image_id": 2, "category_id": B, "bbox": [0, 0, 10, 10], "area": 100},
        ],
        "categories": [{"id": A}, {"id": B}],
    }
    # tidecv divides by zero here (no class left once the misses are fixed)
    out = run_detkit(gt, [])
    assert out["ap50"] == 0 and all(v == 0 for v in out["main"].values())
    assert out["special"] == {"FalsePos": 0, "FalseNeg": 0}
    assert [r["type"] for r in out["errors"]] == ["Miss", "Miss"]
    assert out["true_positives"] == []


def test_bad_input_is_refused():
    gt = {"images": [{"id": 1}], "annotations": [], "categories": [{"id": A}]}
    with pytest.raises(DataError, match="image ids"):
        run_detkit(gt, [det(5, A, [0, 0, 1, 1], 0.5)])
    with pytest.raises(DataError, match="category ids"):
        run_detkit(gt, [det(1, 9, [0, 0, 1, 1], 0.5)])
    with pytest.raises(ConfigError, match="bg_thresh"):
        run_detkit(gt, [], pos_thresh=0.5, bg_thresh=0.6)
    with pytest.raises(ConfigError, match="pos_thresh"):
        run_detkit(gt, [], pos_thresh=0)
