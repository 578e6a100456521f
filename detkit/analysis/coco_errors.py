"""What the COCO evaluator's own matching says about a detector: PR curves, COCO's error breakdown,
per-class and per-size AP, and the score that maximises F1 for each class.

Everything here is read from :func:`detkit.evaluation.fast_coco.evaluate_with`, the engine that
gives detkit's printed AP, so every number reconciles with it (score order, at most 100 detections
per image and class, crowd and out-of-area ground truth ignored).

COCO's error breakdown (the MATLAB API's ``CocoEval.analyze``, after Hoiem et al.) reads seven
precision/recall curves per class and area, each one removing another kind of error:

* ``C75`` and ``C50``: precision at IoU 0.75 and 0.50.
* ``Loc``: at IoU 0.10, so poorly localised boxes count as found (duplicates still do not).
* ``Sim``: at IoU 0.10, with the ground truth of the *other* classes of the same supercategory
  added to the class's own as ignored regions: a box on a similar object is then neither right
  nor wrong. The class's own detections only, matched class-agnostically.
* ``Oth``: the same with the ground truth of *every* other class.
* ``BG``: every remaining false positive removed: precision 1 wherever ``Oth`` reached recall.
* ``FN``: every error removed: precision 1 everywhere.

The ignored regions are marked with ``GroundTruth.ann_ignore``, which the engine ORs with
``iscrowd`` as the MATLAB code does (pycocotools' Python port overwrites an ``ignore`` field with
``iscrowd``, which is why tools that fake the flag through ``iscrowd`` get crowd IoU and
unlimited matches instead). Each value is the mean precision over the 101 recall points with -1
read as 0; a class without ground truth in an area has no value there (None), and "all" is the
mean over the classes that have ground truth in that area.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..evaluation.coco_io import Detections, GroundTruth
from ..evaluation.fast_coco import (
    AREA_NAMES,
    COCO_PARAMS,
    IOU_THRESHOLDS,
    EvalParams,
    Matching,
    evaluate_with,
)

BREAKDOWN_TYPES = ("C75", "C50", "Loc", "Sim", "Oth", "BG", "FN")
LOC_PARAMS = EvalParams(iou_thresholds=(0.1,), max_dets=(100,))
# COCO's ten thresholds plus Loc's 0.1 in one run: matching is decided per threshold, so the first
# ten slices are exactly the plain evaluation's and the eleventh is the Loc run's
MAIN_PARAMS = EvalParams(
    iou_thresholds=COCO_PARAMS.iou_thresholds + LOC_PARAMS.iou_thresholds,
    max_dets=COCO_PARAMS.max_dets,
)
_T_COCO = len(COCO_PARAMS.iou_thresholds)
_T50 = int(np.flatnonzero(IOU_THRESHOLDS == 0.5)[0])
_T75 = int(np.flatnonzero(IOU_THRESHOLDS == 0.75)[0])
_M100 = COCO_PARAMS.max_dets.index(100)


@dataclasses.dataclass
class MainEvaluation:
    """The plain COCO evaluation the analysis starts from (COCO's thresholds only), and the
    precision at IoU 0.1 (maxDets 100) that the same run gave."""

    precision: np.ndarray  # (T, R, K, A, M)
    recall: np.ndarray  # (T, K, A, M)
    matching: Matching  # codes (A, T + 1, N): the last threshold is IoU 0.1
    loc_precision: np.ndarray  # (R, K, A)


def evaluate_main(
    gt: GroundTruth, dets: Detections, img_ids: Optional[np.ndarray] = None
) -> MainEvaluation:
    precision, recall, matching = evaluate_with(gt, dets, img_ids, MAIN_PARAMS)
    return MainEvaluation(
        precision[:_T_COCO], recall[:_T_COCO], matching, precision[_T_COCO, :, :, :, _M100]
    )


def class_names(gt: GroundTruth) -> List[str]:
    return [gt.cat_names[int(c)] for c in gt.cat_ids]


def pr_curves(gt: GroundTruth, main: MainEvaluation) -> Dict[str, Dict[str, List[float]]]:
    """``iou_0.50`` / ``iou_0.75`` -> ``all`` and each class -> the 101 interpolated precisions
    (area all, maxDets 100; -1 for a class without ground truth). ``all`` averages the classes with
    ground truth, so its mean over recall is AP50 / AP75."""
    out = {}
    for key, t in (("iou_0.50", _T50), ("iou_0.75", _T75)):
        p = main.precision[t, :, :, 0, _M100]  # (R, K)
        has_gt = (p > -1).all(axis=0)
        curves = {"all": _mean_over_classes(p, has_gt)}
        curves.update({name: p[:, k].tolist() for k, name in enumerate(class_names(gt))})
        out[key] = curves
    return out


def _mean_over_classes(p: np.ndarray, has_gt: np.ndarray) -> List[float]:
    """(R, K) -> (R,) mean over the classes in ``has_gt``; -1 everywhere when there is none."""
    if not has_gt.any():
        return [-1.0] * p.shape[0]
    return p[:, has_gt].mean(axis=1).tolist()


def per_class_area_ap(gt: GroundTruth, main: MainEvaluation) -> Dict[str, Dict[str, float]]:
    """class -> area -> AP@[.5:.95] (maxDets 100), -1 where the class has no ground truth there."""
    p = main.precision[:, :, :, :, _M100]  # (T, R, K, A)
    out = {}
    for k, name in enumerate(class_names(gt)):
        row = {}
        for a, area in enumerate(AREA_NAMES):
            v = p[:, :, k, a]
            row[area] = float(v.mean()) if (v > -1).all() else -1.0
        out[name] = row
    return out


def supercategories(gt: GroundTruth) -> Optional[Dict[int, str]]:
    """category id -> supercategory, or None when a category has none (then Sim is unavailable)."""
    out = {}
    for c in gt.dataset["categories"]:
        sup = c.get("supercategory")
        if sup is None or sup == "":
            return None
        out[int(c["id"])] = str(sup)
    return out


def relabelled_ground_truth(
    gt: GroundTruth, dets: Detections, group: Optional[Dict[int, str]]
) -> GroundTruth:
    """The ground truth as the Sim (``group`` = supercategories) or Oth (``group`` = None) curve
    sees it: every annotation also appears, as an ignored region, under each other class that has
    detections in its image (Sim: only classes of its own supercategory).

    Copies keep the file order of their annotations, which decides the evaluator's ties.
    """
    n = gt.ann_image_id.size
    pairs = np.unique(np.stack([dets.image_id, dets.category_id], axis=1), axis=0)  # (img, cat)
    p_img, p_cat = pairs[:, 0], pairs[:, 1]
    lo = np.searchsorted(p_img, gt.ann_image_id, "left")
    hi = np.searchsorted(p_img, gt.ann_image_id, "right")
    count = hi - lo
    ann = np.repeat(np.arange(n), count)
    slot = np.arange(ann.size) - np.repeat(np.cumsum(count) - count, count) + lo[ann]
    target = p_cat[slot]
    other = target != gt.ann_category_id[ann]
    if group is not None:
        other &= _group_code(group, target) == _group_code(group, gt.ann_category_id[ann])
    ann, target = ann[other], target[other]
    index = np.concatenate([np.arange(n), ann])
    category = np.concatenate([gt.ann_category_id, target])
    ignored = np.concatenate([np.zeros(n, bool), np.ones(ann.size, bool)])
    if gt.ann_ignore is not None:
        ignored |= gt.ann_ignore[index]
    order = np.argsort(index, kind="stable")  # copies of one annotation sit where it does
    index, category, ignored = index[order], category[order], ignored[order]
    return dataclasses.replace(
        gt,
        ann_image_id=gt.ann_image_id[index],
        ann_category_id=category,
        ann_bbox=gt.ann_bbox[index],
        ann_area=gt.ann_area[index],
        ann_crowd=gt.ann_crowd[index],
        ann_ignore=ignored,
    )


def _group_code(group: Dict[int, str], cat: np.ndarray) -> np.ndarray:
    """An integer per supercategory for each category id (-1: unknown category, its own group)."""
    ids = np.array(sorted(group), np.int64)
    names = sorted(set(group.values()))
    codes = np.array([names.index(group[int(i)]) for i in ids], np.int64)
    pos = np.clip(np.searchsorted(ids, cat), 0, max(len(ids) - 1, 0))
    out = np.full(cat.shape, -1, np.int64)
    if ids.size:
        hit = ids[pos] == cat
        out[hit] = codes[pos[hit]]
    out[out == -1] = -2 - cat[out == -1]  # distinct per unknown category
    return out


def breakdown_curves(
    gt: GroundTruth,
    dets: Detections,
    main: MainEvaluation,
    img_ids: Optional[np.ndarray] = None,
    progress=None,
) -> Tuple[Dict[str, Optional[np.ndarray]], np.ndarray]:
    """type -> (R, K, A) precision with -1 read as 0 (None for Sim without supercategories), and
    (K, A) True where the class has ground truth in the area."""

    def at_iou_01(ground: GroundTruth) -> np.ndarray:
        precision, _, _ = evaluate_with(ground, dets, img_ids, LOC_PARAMS)
        if progress is not None:
            progress.update(1)
        return precision[0, :, :, :, 0]  # (R, K, A)

    p = main.precision[..., _M100]  # (T, R, K, A)
    has_gt = main.matching.n_gt > 0  # (K, A)
    groups = supercategories(gt)
    curves: Dict[str, Optional[np.ndarray]] = {
        "C75": p[_T75],
        "C50": p[_T50],
        "Loc": main.loc_precision,
        "Sim": at_iou_01(relabelled_ground_truth(gt, dets, groups)) if groups else None,
        "Oth": at_iou_01(relabelled_ground_truth(gt, dets, None)),
    }
    curves = {k: None if v is None else np.where(v == -1, 0.0, v) for k, v in curves.items()}
    curves["BG"] = (curves["Oth"] > 0).astype(np.float64)
    curves["FN"] = np.ones_like(curves["Oth"])
    return curves, has_gt


def coco_breakdown(
    gt: GroundTruth, curves: Dict[str, Optional[np.ndarray]], has_gt: np.ndarray
) -> Tuple[Dict, Dict]:
    """(``coco_breakdown``, ``coco_breakdown_curves``) as analysis.json holds them: ``all`` and
    each class -> area -> type -> mean precision (None: no ground truth there, or Sim unavailable),
    and the overall curves area -> type -> 101 floats."""
    names = class_names(gt)
    table: Dict[str, Dict] = {"all": {}, **{name: {} for name in names}}
    overall_curves: Dict[str, Dict] = {}
    for a, area in enumerate(AREA_NAMES):
        table["all"][area] = {}
        overall_curves[area] = {}
        for kind in BREAKDOWN_TYPES:
            c = curves[kind]
            keep = has_gt[:, a]
            if c is None or not keep.any():
                table["all"][area][kind] = None
                overall_curves[area][kind] = None
            else:
                table["all"][area][kind] = float(c[:, keep, a].mean())
                overall_curves[area][kind] = c[:, keep, a].mean(axis=1).tolist()
            for k, name in enumerate(names):
                ok = c is not None and has_gt[k, a]
                table[name].setdefault(area, {})[kind] = float(c[:, k, a].mean()) if ok else None
    return table, overall_curves


def _best_f1(
    score: np.ndarray, tp: np.ndarray, fp: np.ndarray, n_gt: int
) -> Optional[Dict[str, float]]:
    """The cut ``score >= s`` (detections sorted by descending score) with the highest F1.

    Cuts fall only between different scores, since a threshold keeps all detections of equal
    score; ties in F1 go to the higher score (fewer detections for the same F1)."""
    if n_gt == 0 or score.size == 0:
        return None
    tp_cum, fp_cum = np.cumsum(tp), np.cumsum(fp)
    last = np.r_[score[1:] != score[:-1], True]  # the end of each run of equal scores
    idx = np.flatnonzero(last)
    f1 = 2.0 * tp_cum[idx] / (tp_cum[idx] + fp_cum[idx] + n_gt)
    best = idx[int(np.argmax(f1))]
    kept = tp_cum[best] + fp_cum[best]
    return {
        "score": float(score[best]),
        "precision": float(tp_cum[best] / kept) if kept else 0.0,
        "recall": float(tp_cum[best] / n_gt),
        "f1": float(f1.max()),
    }


def operating_points(
    gt: GroundTruth, main: MainEvaluation
) -> Tuple[Dict[str, Optional[Dict[str, float]]], Optional[Dict[str, float]]]:
    """Per class (and pooled over all classes) the score that maximises F1 at IoU 0.5, area all,
    maxDets 100, with its precision and recall: true positives are the evaluator's matches,
    detections matched to crowd are neither right nor wrong. None: no ground truth or no detection."""
    m = main.matching
    d = m.dets
    code = m.codes[0, _T50]
    # a detection matched to a crowd region (code 2) or unmatched outside the area range is
    # neither a true nor a false positive, as in the evaluator
    tp_all = code == 1
    fp_all = (code == 0) & ~d["outside"][0]
    n_gt = m.n_gt[:, 0]
    order = np.lexsort((d["orig"], d["img"], -d["score"], d["cat"]))
    starts = np.searchsorted(d["cat"][order], np.arange(len(gt.cat_ids) + 1))
    per_class = {}
    for k, name in enumerate(class_names(gt)):
        sel = order[starts[k] : starts[k + 1]]
        per_class[name] = _best_f1(d["score"][sel], tp_all[sel], fp_all[sel], int(n_gt[k]))
    pooled = np.lexsort((d["orig"], d["img"], d["cat"], -d["score"]))
    overall = _best_f1(d["score"][pooled], tp_all[pooled], fp_all[pooled], int(n_gt.sum()))
    return per_class, overall
