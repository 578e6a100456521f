"""The error analysis' COCO numbers equal pycocotools run the way COCO's MATLAB ``analyze()`` runs it.

On the real val2014 files (100 images, 80 classes, crowd boxes) and on a random case: the PR curves
are pycocotools' precision arrays; Loc is pycocotools at IoU 0.1; Sim and Oth are pycocotools at
IoU 0.1 on the class's own detections with the other classes' ground truth relabelled to that
class and flagged ``ignore`` -- ORed with ``iscrowd`` as the MATLAB code does (pycocotools' own
``_prepare`` overwrites the flag, so the reference patches that one line); the operating points are
a sweep over every score threshold counting pycocotools' own matches.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detkit.analysis.coco_errors import (
    BREAKDOWN_TYPES,
    breakdown_curves,
    coco_breakdown,
    evaluate_main,
    operating_points,
    pr_curves,
)
from detkit.evaluation.coco_io import load_coco_gt, load_coco_results, results_to_detections
from detkit.evaluation.fast_coco import AREA_NAMES
from tests.helpers import reference_data


class AnalyzeEval(COCOeval):
    """COCOeval with COCO MATLAB's ``gt.ignore = gt.ignore | gt.iscrowd``."""

    def _prepare(self):
        super()._prepare()
        for gts in self._gts.values():
            for g in gts:
                g["ignore"] = int(bool(g.get("iscrowd", 0)) or bool(g.get("analyze_ignore", 0)))


def _coco(dataset):
    with contextlib.redirect_stdout(io.StringIO()):
        c = COCO()
        c.dataset = copy.deepcopy(dataset)
        c.createIndex()
    return c


def _run(gt_dataset, results, iou_thrs, cat_ids=None, max_dets=(1, 10, 100)):
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = _coco(gt_dataset)
        coco_dt = coco_gt.loadRes(copy.deepcopy(results)) if results else _coco({**gt_dataset})
        ev = AnalyzeEval(coco_gt, coco_dt, iouType="bbox")
        ev.params.iouThrs = np.array(iou_thrs, np.float64)
        ev.params.maxDets = list(max_dets)
        if cat_ids is not None:
            ev.params.catIds = list(cat_ids)
        ev.evaluate()
        ev.accumulate()
    return ev


def _relabelled(gt_dataset, cat_id, same_super):
    """COCO analyze()'s ground truth for ``cat_id``: other classes (of its supercategory, or all)
    relabelled to it and ignored."""
    data = copy.deepcopy(gt_dataset)
    sup = {c["id"]: c.get("supercategory") for c in data["categories"]}
    for ann in data["annotations"]:
        other = ann["category_id"] != cat_id
        if other and (not same_super or sup[ann["category_id"]] == sup[cat_id]):
            ann["category_id"] = cat_id
            ann["analyze_ignore"] = 1
    return data


def _real_case():
    gt_path = reference_data(
        "faster_coco_eval", "tests", "dataset", "cocoapi", "instances_val2014_100.json"
    )
    res_path = reference_data("cocoapi", "results", "instances_val2014_fakebbox100_results.json")
    return json.loads(gt_path.read_text()), json.loads(res_path.read_text())


def _random_case(seed=0, n_img=30, n_cat=6):
    rng = np.random.default_rng(seed)
    cats = [{"id": i + 1, "name": f"c{i}", "supercategory": f"s{i % 2}"} for i in range(n_cat)]
    images, anns, dets = [], [], []
    for img in range(1, n_img + 1):
        images.append({"id": img, "width": 400, "height": 300})
        for _ in range(rng.integers(0, 8)):
            x, y = rng.uniform(0, 300), rng.uniform(0, 200)
            w, h = rng.uniform(4, 120), rng.uniform(4, 120)
            c = int(rng.integers(1, n_cat + 1))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img,
                    "category_id": c,
                    "bbox": [x, y, w, h],
                    "area": w * h * rng.uniform(0.6, 1.0),
                    "iscrowd": int(rng.random() < 0.08),
                }
            )
            for _ in range(rng.integers(0, 4)):  # noisy copies, often of another class
                jit = rng.normal(0, 0.25, 4) * [w, h, w, h]
                cc = c if rng.random() < 0.5 else int(rng.integers(1, n_cat + 1))
                dets.append(
                    {
                        "image_id": img,
                        "category_id": cc,
                        "bbox": [x + jit[0], y + jit[1], max(w + jit[2], 1), max(h + jit[3], 1)],
                        "score": float(np.round(rng.random(), 2)),  # ties on purpose
                    }
                )
        for _ in range(rng.integers(0, 3)):  # background boxes
            dets.append(
                {
                    "image_id": img,
                    "category_id": int(rng.integers(1, n_cat + 1)),
                    "bbox": [rng.uniform(0, 300), rng.uniform(0, 200), 30.0, 20.0],
                    "score": float(rng.random()),
                }
            )
    return {"images": images, "annotations": anns, "categories": cats}, dets


CASES = {"val2014_100": _real_case, "random": _random_case}


@pytest.fixture(params=sorted(CASES), scope="module")
def case(request):
    gt_dataset, results = CASES[request.param]()
    gt = load_coco_gt(gt_dataset)
    dets = results_to_detections(load_coco_results(results)[0], "results")
    main = evaluate_main(gt, dets)
    curves, has_gt = breakdown_curves(gt, dets, main)
    return gt_dataset, results, gt, dets, main, curves, has_gt


def test_pr_curves_are_pycocotools_precision(case):
    gt_dataset, results, gt, dets, main, _, _ = case
    ref = _run(gt_dataset, results, np.linspace(0.5, 0.95, 10)).eval["precision"]
    got = pr_curves(gt, main)
    names = [gt.cat_names[int(c)] for c in gt.cat_ids]
    for key, t in (("iou_0.50", 0), ("iou_0.75", 5)):
        for k, name in enumerate(names):
            np.testing.assert_allclose(got[key][name], ref[t, :, k, 0, 2], rtol=0, atol=1e-9)
        p = ref[t, :, :, 0, 2]
        ap = p[p > -1].mean()
        assert abs(np.mean(got[key]["all"]) - ap) < 1e-12


def test_loc_sim_oth_equal_pycocotools_with_analyze_flags(case):
    gt_dataset, results, gt, _, _, curves, has_gt = case
    loc = _run(gt_dataset, results, [0.1], max_dets=[100]).eval["precision"][0, :, :, :, 0]
    np.testing.assert_allclose(curves["Loc"], np.where(loc == -1, 0, loc), rtol=0, atol=1e-9)
    for k, cat_id in enumerate(gt.cat_ids.tolist()):
        own = [r for r in results if r["category_id"] == cat_id]
        if not own:  # no detection of this class: precision 0 (or -1 -> 0) everywhere
            assert not curves["Sim"][:, k].any() and not curves["Oth"][:, k].any()
            continue
        for kind, same_super in (("Sim", True), ("Oth", False)):
            data = _relabelled(gt_dataset, cat_id, same_super)
            ref = _run(data, own, [0.1], cat_ids=[cat_id], max_dets=[100]).eval["precision"]
            ref = ref[0, :, 0, :, 0]
            np.testing.assert_allclose(
                curves[kind][:, k], np.where(ref == -1, 0, ref), rtol=0, atol=1e-9, err_msg=kind
            )
    np.testing.assert_array_equal(curves["BG"], curves["Oth"] > 0)
    assert (curves["FN"] == 1).all()


def test_breakdown_table_means_and_overall(case):
    _, _, gt, _, _, curves, has_gt = case
    table, overall = coco_breakdown(gt, curves, has_gt)
    names = [gt.cat_names[int(c)] for c in gt.cat_ids]
    for a, area in enumerate(AREA_NAMES):
        keep = has_gt[:, a]
        for kind in BREAKDOWN_TYPES:
            per_class = [table[n][area][kind] for n in names]
            assert [v is None for v in per_class] == list(~keep)
            valid = [v for v in per_class if v is not None]
            assert table["all"][area][kind] == pytest.approx(np.mean(valid), abs=1e-12)
            assert np.mean(overall[area][kind]) == pytest.approx(np.mean(valid), abs=1e-12)
        row = table["all"][area]
        # each curve removes more errors than the one before it
        values = [row[k] for k in BREAKDOWN_TYPES]
        assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))


def test_no_supercategory_makes_sim_unavailable():
    gt_dataset, results = _random_case(seed=3)
    for c in gt_dataset["categories"]:
        del c["supercategory"]
    gt = load_coco_gt(gt_dataset)
    dets = results_to_detections(results, "results")
    main = evaluate_main(gt, dets)
    curves, has_gt = breakdown_curves(gt, dets, main)
    table, overall = coco_breakdown(gt, curves, has_gt)
    assert curves["Sim"] is None and table["all"]["all"]["Sim"] is None
    assert overall["all"]["Sim"] is None and table["all"]["all"]["Oth"] is not None


def _pycocotools_matches(gt_dataset, results):
    """(category id, score, is_tp, is_ignored) for every detection pycocotools kept (IoU .5, all)."""
    ev = _run(gt_dataset, results, [0.5], max_dets=[100])
    rows = []
    for e in ev.evalImgs:
        if e is None or e["aRng"] != [0, 1e10]:
            continue
        for j, score in enumerate(e["dtScores"]):
            ignored = bool(e["dtIgnore"][0, j])
            rows.append(
                (e["category_id"], score, bool(e["dtMatches"][0, j]) and not ignored, ignored)
            )
    n_gt = {}
    for e in ev.evalImgs:
        if e is not None and e["aRng"] == [0, 1e10]:
            n_gt[e["category_id"]] = n_gt.get(e["category_id"], 0) + int(
                (~e["gtIgnore"].astype(bool)).sum()
            )
    return rows, n_gt


def test_operating_points_are_the_best_f1_threshold(case):
    gt_dataset, results, gt, _, main, _, _ = case
    got, overall = operating_points(gt, main)
    rows, n_gt = _pycocotools_matches(gt_dataset, results)

    def best(selected, total):
        scores = sorted({s for _, s, _, _ in selected}, reverse=True)
        top = None
        for s in scores:  # brute force: every distinct score as the threshold
            tp = sum(1 for _, sc, t, _ in selected if sc >= s and t)
            fp = sum(1 for _, sc, t, ig in selected if sc >= s and not t and not ig)
            f1 = 2 * tp / (tp + fp + total)
            if top is None or f1 > top[0] + 1e-15:
                top = (f1, s, tp / (tp + fp) if tp + fp else 0.0, tp / total)
        return top

    for cat_id in gt.cat_ids.tolist():
        name = gt.cat_names[cat_id]
        selected = [r for r in rows if r[0] == cat_id]
        total = n_gt.get(cat_id, 0)
        if total == 0 or not selected:
            assert got[name] is None
            continue
        f1, s, p, r = best(selected, total)
        assert got[name] == pytest.approx({"score": s, "precision": p, "recall": r, "f1": f1})
    f1, s, p, r = best(rows, sum(n_gt.values()))
    assert overall == pytest.approx({"score": s, "precision": p, "recall": r, "f1": f1})
