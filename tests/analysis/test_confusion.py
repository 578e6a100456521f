"""The one-to-one detection confusion matrix against a brute-force matcher written from its rule.

The brute force below works on the raw COCO dicts with plain loops and its own IoU (pycocotools'
``bbIou`` formula), so it shares no code with ``detkit.analysis.confusion`` beyond the rule.
"""

from __future__ import annotations

import numpy as np
import pytest

from detkit.analysis.confusion import confusion_matrix
from detkit.evaluation.coco_io import load_coco_gt, load_coco_results, results_to_detections
from tests.helpers import reference_data

COCO_GT = ("faster_coco_eval", "tests", "dataset", "cocoapi", "instances_val2014_100.json")
COCO_RESULTS = ("cocoapi", "results", "instances_val2014_fakebbox100_results.json")


def _iou(d, g, crowd):
    """pycocotools' bbIou for one pair of XYWH boxes (crowd: intersection / detection area)."""
    w = min(d[2] + d[0], g[2] + g[0]) - max(d[0], g[0])
    if w <= 0:
        return 0.0
    h = min(d[3] + d[1], g[3] + g[1]) - max(d[1], g[1])
    if h <= 0:
        return 0.0
    inter = w * h
    union = d[2] * d[3] if crowd else d[2] * d[3] + g[2] * g[3] - inter
    return inter / union


def brute_force(dataset, results, score_thresh, iou_thresh, max_dets=100, ignore_ids=()):
    """(counts, per_image) straight from the rule, one detection and one object at a time."""
    cats = sorted(c["id"] for c in dataset["categories"])
    row = {c: i for i, c in enumerate(cats)}
    K = len(cats)
    counts = [[0] * (K + 1) for _ in range(K + 1)]
    images = sorted(im["id"] for im in dataset["images"])
    objects = {img: [] for img in images}
    for a in dataset["annotations"]:  # file order
        if a["image_id"] in objects and a["category_id"] in row:
            objects[a["image_id"]].append(a)
    groups = {}
    for n, r in enumerate(results):
        groups.setdefault((r["image_id"], r["category_id"]), []).append((n, r))
    kept = {img: [] for img in images}
    for group in groups.values():
        best_first = sorted(group, key=lambda nr: -nr[1]["score"])  # sorted() is stable
        for n, r in best_first[:max_dets]:
            if r["score"] >= score_thresh:
                kept[r["image_id"]].append((n, r))
    per_image = {}
    for img in images:
        stats = {"tp": 0, "confused": 0, "fp": 0, "missed": 0}
        gts = objects[img]
        ignored = [bool(a.get("iscrowd", 0)) or a["id"] in ignore_ids for a in gts]
        taken = [False] * len(gts)
        for _, det in sorted(kept[img], key=lambda nr: (-nr[1]["score"], nr[0])):
            best = None
            for own_class_only in (True, False):
                best_iou = -1.0
                for j, a in enumerate(gts):
                    if ignored[j] or taken[j]:
                        continue
                    if own_class_only and a["category_id"] != det["category_id"]:
                        continue
                    iou = _iou(det["bbox"], a["bbox"], False)
                    if iou >= iou_thresh and iou > best_iou:  # '>': ties stay with the earlier
                        best, best_iou = j, iou
                if best is not None:
                    break
            if best is not None:
                taken[best] = True
                truth = gts[best]["category_id"]
                counts[row[truth]][row[det["category_id"]]] += 1
                stats["tp" if truth == det["category_id"] else "confused"] += 1
            elif any(
                ignored[j] and _iou(det["bbox"], a["bbox"], a.get("iscrowd", 0)) >= iou_thresh
                for j, a in enumerate(gts)
            ):
                pass  # on an ignored region: counts nowhere
            else:
                counts[K][row[det["category_id"]]] += 1
                stats["fp"] += 1
        for j, a in enumerate(gts):
            if not ignored[j] and not taken[j]:
                counts[row[a["category_id"]]][K] += 1
                stats["missed"] += 1
        per_image[img] = stats
    return counts, per_image


def _load(dataset, results, ignore_ids=()):
    gt = load_coco_gt(dataset)
    if ignore_ids:
        gt.ann_ignore = np.array([a["id"] in ignore_ids for a in dataset["annotations"]], bool)
    return gt, results_to_detections(*load_coco_results(results))


def _check_against_brute_force(dataset, results, score_thresh, iou_thresh, **kw):
    gt, dets = _load(dataset, results, kw.get("ignore_ids", ()))
    out = confusion_matrix(gt, dets, score_thresh, iou_thresh, kw.get("max_dets", 100))
    counts, per_image = brute_force(dataset, results, score_thresh, iou_thresh, **kw)
    assert out["counts"] == counts
    assert out["per_image"] == per_image
    _check_consistent(out)
    return out


def _check_consistent(out):
    """The derived numbers agree with ``counts``; the diagonal reproduces precision and recall."""
    counts = np.asarray(out["counts"])
    K = counts.shape[0] - 1
    assert out["labels"][-1] == "background" and len(out["labels"]) == K + 1
    assert counts[K, K] == 0
    for k, name in enumerate(out["labels"][:K]):
        col, row = counts[:, k].sum(), counts[k, :].sum()
        expect_p = counts[k, k] / col if col else None
        expect_r = counts[k, k] / row if row else None
        assert out["precision"][name] == pytest.approx(expect_p)
        assert out["recall"][name] == pytest.approx(expect_r)
    rows, cols = np.asarray(out["row_normalized"]), np.asarray(out["col_normalized"])
    np.testing.assert_allclose(rows.sum(axis=1), (counts.sum(axis=1) > 0).astype(float))
    np.testing.assert_allclose(cols.sum(axis=0), (counts.sum(axis=0) > 0).astype(float))
    np.testing.assert_allclose(rows * counts.sum(axis=1, keepdims=True), counts)
    np.testing.assert_allclose(cols * counts.sum(axis=0, keepdims=True), counts)
    # every image's tally adds up to the matrix
    tally = {k: sum(s[k] for s in out["per_image"].values()) for k in ("tp", "confused", "fp")}
    assert tally["tp"] == np.trace(counts)
    assert tally["confused"] == counts[:K, :K].sum() - np.trace(counts)
    assert tally["fp"] == counts[K, :K].sum()
    assert sum(s["missed"] for s in out["per_image"].values()) == counts[:K, K].sum()


# ---- (1) the real COCO files --------------------------------------------------------------------


@pytest.fixture(scope="module")
def coco_files():
    import json

    with open(reference_data(*COCO_GT)) as f:
        dataset = json.load(f)
    with open(reference_data(*COCO_RESULTS)) as f:
        results = json.load(f)
    return dataset, results


@pytest.mark.parametrize(
    "score_thresh, iou_thresh", [(0.0, 0.5), (0.3, 0.5), (0.5, 0.75), (0.1, 0.1), (0.7, 0.95)]
)
def test_coco_files_match_brute_force(coco_files, score_thresh, iou_thresh):
    dataset, results = coco_files
    out = _check_against_brute_force(dataset, results, score_thresh, iou_thresh)
    assert np.asarray(out["counts"]).sum() > 0
    assert out["score_thresh"] == score_thresh and out["iou_thresh"] == iou_thresh


def test_coco_files_with_ignored_objects_and_a_cap(coco_files):
    dataset, results = coco_files
    ignore_ids = {a["id"] for a in dataset["annotations"][::7]}
    for max_dets in (1, 3, 100):
        _check_against_brute_force(
            dataset, results, 0.2, 0.5, max_dets=max_dets, ignore_ids=ignore_ids
        )


# ---- (2) random synthetic data: heavy class confusion, crowds, ties -----------------------------


def _synthetic(seed, n_images=25, n_cats=4):
    """Ground truth with crowds and exact duplicate boxes of different classes (IoU ties);
    detections that are jittered copies with a random (often wrong) class, duplicates, and random
    boxes, with coarse scores so that score ties are common.  The last class has no ground truth."""
    rng = np.random.default_rng(seed)
    images = [{"id": int(i), "width": 200, "height": 200} for i in range(1, n_images + 1)]
    cats = [{"id": 10 * (c + 1), "name": f"c{c}"} for c in range(n_cats)]
    anns, results = [], []
    for im in images:
        boxes = []
        for _ in range(int(rng.integers(0, 8))):
            box = [float(v) for v in rng.integers(0, 120, 2)] + [
                float(v) for v in rng.integers(4, 80, 2)
            ]
            boxes.append(box)
            if rng.random() < 0.2:
                boxes.append(list(box))  # the same box twice: IoU ties between objects
        for box in boxes:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": im["id"],
                    "category_id": cats[int(rng.integers(0, n_cats - 1))]["id"],
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": int(rng.random() < 0.15),
                }
            )
        for box in boxes * 3:
            if rng.random() < 0.6:
                jit = rng.normal(0, 0.15, 4) * [box[2], box[3], box[2], box[3]]
                results.append(_det(rng, im["id"], cats, np.add(box, jit)))
        for _ in range(int(rng.integers(0, 6))):
            box = np.r_[rng.uniform(0, 150, 2), rng.uniform(2, 60, 2)]
            results.append(_det(rng, im["id"], cats, box))
    return {"images": images, "categories": cats, "annotations": anns}, results


def _det(rng, img, cats, box):
    box = [float(v) for v in box]
    box[2], box[3] = max(box[2], 0.5), max(box[3], 0.5)
    cat = cats[int(rng.integers(0, len(cats)))]["id"]
    return {"image_id": img, "category_id": cat, "bbox": box, "score": round(rng.random(), 1)}


@pytest.mark.parametrize("seed", range(6))
def test_synthetic_matches_brute_force(seed):
    dataset, results = _synthetic(seed)
    ids = [a["id"] for a in dataset["annotations"]]
    ignore_ids = set(ids[seed % 5 :: 5])
    for score_thresh, iou_thresh, max_dets in [(0.0, 0.5, 100), (0.4, 0.3, 100), (0.2, 0.6, 2)]:
        out = _check_against_brute_force(
            dataset,
            results,
            score_thresh,
            iou_thresh,
            max_dets=max_dets,
            ignore_ids=ignore_ids if seed % 2 else (),
        )
        counts = np.asarray(out["counts"])
        if score_thresh == 0.0:
            assert counts[:-1, :-1].sum() > np.trace(counts) > 0  # confusions happen


# ---- (3) small hand-built cases -----------------------------------------------------------------


def _case(objects, dets, n_cats=3):
    """objects: (class, box, iscrowd); dets: (class, box, score); one image, classes 1..n_cats."""
    dataset = {
        "images": [{"id": 1}],
        "categories": [{"id": c, "name": f"k{c}"} for c in range(1, n_cats + 1)],
        "annotations": [
            {"id": n + 1, "image_id": 1, "category_id": c, "bbox": b, "area": 1.0, "iscrowd": z}
            for n, (c, b, z) in enumerate(objects)
        ],
    }
    results = [{"image_id": 1, "category_id": c, "bbox": b, "score": s} for c, b, s in dets]
    return dataset, results


def _run(objects, dets, score_thresh=0.0, iou_thresh=0.5, **kw):
    dataset, results = _case(objects, dets)
    gt, d = _load(dataset, results, kw.pop("ignore_ids", ()))
    out = confusion_matrix(gt, d, score_thresh, iou_thresh, **kw)
    _check_consistent(out)
    return np.asarray(out["counts"]), out


BOX = [10.0, 10.0, 20.0, 20.0]


def test_confused_box_counts_once_not_also_as_a_miss():
    counts, out = _run([(1, BOX, 0)], [(2, BOX, 0.9)])
    expected = np.zeros((4, 4), int)
    expected[0, 1] = 1  # an object of k1 detected as k2
    np.testing.assert_array_equal(counts, expected)
    assert out["per_image"] == {1: {"tp": 0, "confused": 1, "fp": 0, "missed": 0}}
    assert out["precision"]["k2"] == 0.0 and out["recall"]["k1"] == 0.0


def test_duplicate_becomes_a_background_false_positive():
    counts, out = _run([(1, BOX, 0)], [(1, BOX, 0.9), (1, [11.0, 10.0, 20.0, 20.0], 0.8)])
    assert counts[0, 0] == 1 and counts[3, 0] == 1 and counts.sum() == 2
    assert out["precision"]["k1"] == 0.5 and out["recall"]["k1"] == 1.0
    # a duplicate of another class is a false positive too, not a second confusion
    counts, _ = _run([(1, BOX, 0)], [(1, BOX, 0.9), (2, BOX, 0.8)])
    assert counts[0, 0] == 1 and counts[3, 1] == 1 and counts.sum() == 2


def test_detection_on_a_crowd_region_counts_nowhere():
    crowd = [0.0, 0.0, 100.0, 100.0]
    # inside the crowd: IoU with it is intersection / detection area = 1, for any class
    counts, out = _run([(1, crowd, 1)], [(1, BOX, 0.9), (2, BOX, 0.8)])
    assert counts.sum() == 0  # and the crowd itself is not a miss
    assert out["per_image"][1] == {"tp": 0, "confused": 0, "fp": 0, "missed": 0}
    # a detection that matches a real object first is still counted; the crowd is not used up
    counts, _ = _run([(1, crowd, 1), (1, BOX, 0)], [(1, BOX, 0.9), (1, BOX, 0.8)])
    assert counts[0, 0] == 1 and counts.sum() == 1
    # an object marked ignored (ann_ignore, like VOC's difficult) acts like a crowd
    counts, _ = _run([(1, BOX, 0)], [(3, BOX, 0.9)], ignore_ids={1})
    assert counts.sum() == 0


def test_own_class_is_preferred_over_a_better_overlap():
    wrong = (2, [10.0, 10.0, 20.0, 20.0], 0)
    right = (1, [14.0, 10.0, 20.0, 20.0], 0)  # IoU 16/24 with the detection
    counts, _ = _run([wrong, right], [(1, BOX, 0.9)])
    assert counts[0, 0] == 1 and counts[1, 3] == 1 and counts.sum() == 2


def test_iou_ties_go_to_the_earlier_object_in_the_file():
    counts, _ = _run([(2, BOX, 0), (3, BOX, 0)], [(1, BOX, 0.9)])
    assert counts[1, 0] == 1 and counts[2, 3] == 1 and counts.sum() == 2
    counts, _ = _run([(3, BOX, 0), (2, BOX, 0)], [(1, BOX, 0.9)])
    assert counts[2, 0] == 1 and counts[1, 3] == 1 and counts.sum() == 2


def test_higher_score_matches_first_and_ties_keep_results_order():
    shifted = [12.0, 10.0, 20.0, 20.0]
    # the lower-scored exact box comes second: the higher score takes the object
    counts, _ = _run([(1, BOX, 0)], [(2, shifted, 0.9), (1, BOX, 0.5)])
    assert counts[0, 1] == 1 and counts[3, 0] == 1
    # equal scores: the first in the results list goes first, whatever its class
    counts, _ = _run([(1, BOX, 0)], [(2, shifted, 0.5), (1, BOX, 0.5)])
    assert counts[0, 1] == 1 and counts[3, 0] == 1
    counts, _ = _run([(1, BOX, 0)], [(1, BOX, 0.5), (2, shifted, 0.5)])
    assert counts[0, 0] == 1 and counts[3, 1] == 1


def test_thresholds_and_the_per_class_cap():
    dets = [(1, BOX, 0.3), (1, [50.0, 50.0, 5.0, 5.0], 0.9), (1, [70.0, 70.0, 5.0, 5.0], 0.8)]
    counts, _ = _run([(1, BOX, 0)], dets, score_thresh=0.5)
    assert counts[0, 3] == 1 and counts[3, 0] == 2 and counts.sum() == 3
    # the cap drops the lowest-scored detection of the class before the score threshold
    counts, _ = _run([(1, BOX, 0)], dets, max_dets=2)
    assert counts[0, 3] == 1 and counts[3, 0] == 2
    counts, _ = _run([(1, BOX, 0)], dets, max_dets=3)
    assert counts[0, 0] == 1 and counts[3, 0] == 2
    # below the IoU threshold a detection is a false positive and the object a miss
    counts, _ = _run([(1, BOX, 0)], [(1, [20.0, 10.0, 20.0, 20.0], 0.9)], iou_thresh=0.5)
    assert counts[0, 3] == 1 and counts[3, 0] == 1
    counts, _ = _run([(1, BOX, 0)], [(1, [20.0, 10.0, 20.0, 20.0], 0.9)], iou_thresh=0.3)
    assert counts[0, 0] == 1 and counts.sum() == 1


# ---- (4) / (5) precision, recall and edge cases -------------------------------------------------


def test_diagonal_reproduces_precision_and_recall():
    dataset, results = _synthetic(11)
    gt, dets = _load(dataset, results)
    out = confusion_matrix(gt, dets, 0.3)
    counts = np.asarray(out["counts"], float)
    diag = np.diag(counts)[:-1]
    for k, name in enumerate(out["labels"][:-1]):
        if counts[:, k].sum():
            assert out["precision"][name] == diag[k] / counts[:, k].sum()
        if counts[k].sum():
            assert out["recall"][name] == diag[k] / counts[k].sum()
    assert out["recall"]["c3"] is None  # the last synthetic class has no ground truth


def test_empty_detections_put_every_object_in_the_background_column():
    dataset, _ = _synthetic(3)
    counts, _ = brute_force(dataset, [], 0.0, 0.5)
    gt, dets = _load(dataset, [])
    out = confusion_matrix(gt, dets, 0.0)
    assert out["counts"] == counts
    arr = np.asarray(out["counts"])
    n_real = sum(not a["iscrowd"] for a in dataset["annotations"])
    assert arr[:, -1].sum() == n_real > 0 and arr[:, :-1].sum() == 0
    assert all(p is None for p in out["precision"].values())
    assert all(r in (0.0, None) for r in out["recall"].values())
    assert set(out["per_image"]) == {im["id"] for im in dataset["images"]}


def test_class_without_ground_truth_has_precision_but_no_recall():
    counts, out = _run([(1, BOX, 0)], [(1, BOX, 0.9), (3, [60.0, 60.0, 10.0, 10.0], 0.8)])
    assert out["precision"]["k3"] == 0.0 and out["recall"]["k3"] is None
    assert out["precision"]["k2"] is None and out["recall"]["k2"] is None
    assert out["labels"] == ["k1", "k2", "k3", "background"]
    assert out["row_normalized"][1] == [0.0] * 4  # an empty row stays 0


def test_bad_inputs_are_refused():
    dataset, results = _case([(1, BOX, 0)], [(9, BOX, 0.9)])
    gt, dets = _load(dataset, results)
    with pytest.raises(ValueError, match="category ids"):
        confusion_matrix(gt, dets, 0.5)
    with pytest.raises(ValueError, match="iou_thresh"):
        confusion_matrix(gt, dets, 0.5, iou_thresh=0.0)
