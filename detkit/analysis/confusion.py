"""A detection confusion matrix built from a one-to-one matching of detections to objects.

Rows are the ground-truth classes (``gt.cat_ids`` order) plus a last ``background`` row; columns are
the predicted classes plus a last ``background`` column.  Every counted detection and every
non-ignored object lands in exactly one cell:

* diagonal ``(c, c)``: a detection of class ``c`` matched to an object of class ``c`` (true positive);
* ``(g, c)`` off the diagonal: a detection of class ``c`` matched to an object of class ``g``
  (a confusion: the box is right, the label wrong);
* ``(background, c)``: a detection of class ``c`` that matched nothing (false positive);
* ``(g, background)``: an object of class ``g`` that no detection matched (a miss).

The matching, image by image:

1. Of each (image, class) group's detections only the ``max_dets`` best by score take part (stable:
   equal scores keep their results-list order), as in the COCO evaluator; then those with
   ``score < score_thresh`` are dropped.
2. The remaining detections of the image are walked by descending score (stable again).  Each takes
   the still-free, non-ignored object *of its own class* with the highest IoU >= ``iou_thresh``;
   failing that, the still-free, non-ignored object of *any* class with the highest IoU >=
   ``iou_thresh``.  Equal IoUs go to the object earlier in the ground-truth file.  A taken object is
   not free any more.
3. A detection that took nothing but has IoU >= ``iou_thresh`` with an *ignored* object (crowd, or
   ``gt.ann_ignore``; of any class; crowd IoU = intersection / detection area, as the evaluator
   computes it) counts nowhere: the region is not annotated box by box, so the detection is neither
   right nor wrong.  Ignored objects are never used up and never count as misses.
4. Any other detection that took nothing is a false positive; every non-ignored object left free is
   a miss.

There are no area ranges here: every object counts whatever its ``area`` (the COCO evaluator's
``all`` range), so no object is ignored for its size.

Why one-to-one: a many-to-many confusion matrix (each detection counted against every object it
overlaps, or each object against every detection) counts one wrong box several times, and a
confused detection shows up both as a confusion and as a miss of the true object.  Here a confused
detection consumes the object it hit, so the object is not also a miss, and a duplicate of an
already matched detection becomes a false positive; the diagonal then reproduces per-class precision
(diagonal / column total) and recall (diagonal / row total) at this score and IoU threshold.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..evaluation.coco_io import Detections, GroundTruth, check_detections
from ..evaluation.fast_coco import pairwise_iou

BACKGROUND = "background"
PAIR_CHUNK = 2_000_000  # detection x ground-truth pairs per IoU batch (bounds memory)


def confusion_matrix(
    gt: GroundTruth,
    dets: Detections,
    score_thresh: float,
    iou_thresh: float = 0.5,
    max_dets: int = 100,
) -> Dict[str, Any]:
    """The confusion matrix of ``dets`` against ``gt`` (see the module docstring for the rule).

    Returns a dict of plain Python values:

    * ``labels``: the class names in ``gt.cat_ids`` order, then ``"background"``;
    * ``counts``: (K+1) x (K+1) ints, rows = ground truth, columns = prediction;
    * ``row_normalized`` / ``col_normalized``: ``counts`` divided by its row / column sums (rows or
      columns without counts stay 0);
    * ``precision`` / ``recall``: per class name, diagonal / column total and diagonal / row total,
      ``None`` where the total is 0;
    * ``score_thresh``, ``iou_thresh``;
    * ``per_image``: ``{image_id: {"tp", "confused", "fp", "missed"}}`` for every ground-truth image.

    Detections whose image or category the ground truth does not know are rejected
    (``ValueError``), as the COCO evaluator rejects them; annotations with an unknown image or
    category are left out (the loader already warned about them).
    """
    score_thresh, iou_thresh, max_dets = float(score_thresh), float(iou_thresh), int(max_dets)
    if not 0.0 < iou_thresh <= 1.0:
        raise ValueError(f"iou_thresh must be in (0, 1], got {iou_thresh}")
    if max_dets < 1:
        raise ValueError(f"max_dets must be >= 1, got {max_dets}")
    check_detections(dets, gt, "detections")
    img_ids, cat_ids = gt.image_ids, gt.cat_ids
    K = len(cat_ids)

    g = _index_gt(gt, img_ids, cat_ids)
    d = _index_dets(dets, img_ids, cat_ids, score_thresh, max_dets)
    match, on_ignored = _match(g, d, iou_thresh)

    # every counted detection and non-ignored object goes to exactly one (row, col) cell
    matched = match >= 0
    det_row = np.where(matched, g["cat"][np.maximum(match, 0)], K)
    counted = matched | ~on_ignored  # matched, or a false positive
    free_gt = ~g["ignore"]
    free_gt[match[matched]] = False  # objects left free are the misses
    rows = np.concatenate([det_row[counted], g["cat"][free_gt]])
    cols = np.concatenate([d["cat"][counted], np.full(int(free_gt.sum()), K)])
    counts = np.bincount(rows * (K + 1) + cols, minlength=(K + 1) ** 2).reshape(K + 1, K + 1)

    n_img = len(img_ids)
    tp = matched & (det_row == d["cat"])
    per_kind = {
        "tp": np.bincount(d["img"][tp], minlength=n_img),
        "confused": np.bincount(d["img"][matched & ~tp], minlength=n_img),
        "fp": np.bincount(d["img"][~matched & ~on_ignored], minlength=n_img),
        "missed": np.bincount(g["img"][free_gt], minlength=n_img),
    }
    per_kind = {k: v.tolist() for k, v in per_kind.items()}
    per_image = {
        img: {k: v[i] for k, v in per_kind.items()} for i, img in enumerate(img_ids.tolist())
    }

    names = [gt.cat_names.get(int(c), str(int(c))) for c in cat_ids]
    diag = np.diag(counts)[:K]
    col_total, row_total = counts.sum(axis=0)[:K], counts.sum(axis=1)[:K]
    return {
        "labels": names + [BACKGROUND],
        "counts": counts.tolist(),
        "row_normalized": _normalized(counts, axis=1),
        "col_normalized": _normalized(counts, axis=0),
        "precision": {n: _ratio(t, s) for n, t, s in zip(names, diag, col_total)},
        "recall": {n: _ratio(t, s) for n, t, s in zip(names, diag, row_total)},
        "score_thresh": score_thresh,
        "iou_thresh": iou_thresh,
        "per_image": per_image,
    }


def _ratio(num, den) -> Optional[float]:
    return float(num) / float(den) if den else None


def _normalized(counts: np.ndarray, axis: int) -> List[List[float]]:
    total = counts.sum(axis=axis, keepdims=True).astype(np.float64)
    out = np.zeros(counts.shape)
    np.divide(counts, total, out=out, where=total > 0)  # empty rows / columns stay 0
    return out.tolist()


def _index_gt(gt: GroundTruth, img_ids: np.ndarray, cat_ids: np.ndarray) -> Dict[str, np.ndarray]:
    """The evaluable annotations as arrays, in file order (the IoU tie-break relies on it)."""
    keep = np.isin(gt.ann_image_id, img_ids) & np.isin(gt.ann_category_id, cat_ids)
    ignore = gt.ann_crowd.astype(bool)
    if gt.ann_ignore is not None:
        ignore = ignore | np.asarray(gt.ann_ignore, bool)
    return {
        "img": np.searchsorted(img_ids, gt.ann_image_id[keep]),
        "cat": np.searchsorted(cat_ids, gt.ann_category_id[keep]),
        "box": gt.ann_bbox[keep],
        "crowd": gt.ann_crowd[keep].astype(bool),
        "ignore": ignore[keep],
    }


def _index_dets(
    dets: Detections, img_ids: np.ndarray, cat_ids: np.ndarray, score_thresh: float, max_dets: int
) -> Dict[str, np.ndarray]:
    """The counted detections, sorted by (image, descending score, results-list order)."""
    img = np.searchsorted(img_ids, dets.image_id)
    cat = np.searchsorted(cat_ids, dets.category_id)
    score = dets.score
    # the evaluator's cap: the best max_dets per (image, class), ties in results-list order; the
    # cap comes before the score threshold, as when the evaluator's results are thresholded later
    order = np.lexsort((-score, cat, img))  # lexsort is stable: ties keep the results order
    key = (img * len(cat_ids) + cat)[order]
    idx = np.arange(key.size)
    first = np.r_[True, key[1:] != key[:-1]][: key.size]  # where each group starts
    rank = idx - np.maximum.accumulate(np.where(first, idx, 0))  # 0, 1, 2, ... per group
    keep = order[(rank < max_dets) & (score[order] >= score_thresh)]
    # the walk order inside an image mixes the classes: by score, then results-list order
    keep = keep[np.lexsort((keep, -score[keep], img[keep]))]
    return {"img": img[keep], "cat": cat[keep], "box": dets.bbox[keep]}


def _match(
    g: Dict[str, np.ndarray], d: Dict[str, np.ndarray], iou_thresh: float
) -> Tuple[np.ndarray, np.ndarray]:
    """Greedy one-to-one matching: the object each detection took (-1: none), and whether each
    detection has IoU >= iou_thresh with an ignored object (what decides for unmatched ones)."""
    n_det = d["img"].size
    on_ignored = np.zeros(n_det, bool)
    pd, pg, piou = [], [], []
    for det, gi, iou in _pairs(g, d):
        hit = iou >= iou_thresh
        det, gi, iou = det[hit], gi[hit], iou[hit]
        ign = g["ignore"][gi]
        on_ignored[det[ign]] = True
        pd.append(det[~ign])
        pg.append(gi[~ign])
        piou.append(iou[~ign])
    match = [-1] * n_det
    if not pd:
        return np.asarray(match, np.int64), on_ignored
    pd, pg, piou = (np.concatenate(p) for p in (pd, pg, piou))
    other = g["cat"][pg] != d["cat"][pd]
    # each detection's candidates in preference order: own class first, then higher IoU, then the
    # earlier object in the file; detections in walk order (their index), so a single pass that
    # gives each detection its first still-free candidate is the greedy walk of the rule
    order = np.lexsort((pg, -piou, other, pd))
    used = bytearray(g["img"].size)
    done = -1  # the last detection that found its object: skip its remaining candidates
    for det, obj in zip(pd[order].tolist(), pg[order].tolist()):
        if det != done and not used[obj]:
            used[obj] = 1
            match[det] = obj
            done = det
    return np.asarray(match, np.int64), on_ignored


def _pairs(
    g: Dict[str, np.ndarray], d: Dict[str, np.ndarray]
) -> Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """All (detection, object, IoU) pairs on the same image, in chunks of about PAIR_CHUNK pairs;
    the IoU is computed for whole chunks at once (no per-image Python loop)."""
    g_order = np.argsort(g["img"], kind="stable")  # file order inside an image
    g_img = g["img"][g_order]
    d_uimg, d_start, d_count = np.unique(d["img"], return_index=True, return_counts=True)
    g_uimg, g_start, g_count = np.unique(g_img, return_index=True, return_counts=True)
    _, di, gi = np.intersect1d(d_uimg, g_uimg, assume_unique=True, return_indices=True)
    d_start, d_count, g_start, g_count = d_start[di], d_count[di], g_start[gi], g_count[gi]
    n_pairs = d_count * g_count
    ends = np.cumsum(n_pairs)
    lo = 0
    while lo < n_pairs.size:
        before = ends[lo - 1] if lo else 0
        hi = max(int(np.searchsorted(ends, before + PAIR_CHUNK, "right")), lo + 1)
        per = n_pairs[lo:hi]
        grp = np.repeat(np.arange(hi - lo), per)
        local = np.arange(per.sum()) - np.repeat(np.cumsum(per) - per, per)
        n_gt = g_count[lo:hi][grp]
        det = d_start[lo:hi][grp] + local // n_gt
        obj = g_order[g_start[lo:hi][grp] + local % n_gt]
        yield det, obj, pairwise_iou(d["box"][det], g["box"][obj], g["crowd"][obj])
        lo = hi
