"""TIDE's error breakdown (Bolya et al., "TIDE: A General Toolbox for Identifying Object Detection
Errors", ECCV 2020) computed from detkit's arrays, giving the same numbers as the ``tidecv`` 1.0.1
package in its box mode.

TIDE asks, for each kind of mistake, how much AP the detector would gain if only that kind were
corrected ("dAP"). The rules, as implemented here:

**Evaluation at one IoU.** Boxes are XYWH; IoU is pycocotools' box IoU. Per image, only the
``max_dets`` (100, as TIDE's COCO loader sets) best-scored detections of *all classes together*
take part (equal scores keep their results-list order); the rest are dropped before anything else.
Object areas play no part: there are no area ranges.

**Matching.** Detections are walked by descending score; each takes the still-free object of its
own class with the highest IoU, if that IoU is ``>= pos_thresh`` (equal IoUs go to the object
earlier in the annotation file). Such a detection is a true positive, any other a false positive.

**Ignored ground truth.** Crowd annotations, and those flagged in ``GroundTruth.ann_ignore`` (e.g.
VOC's difficult objects), are regions, not objects: they are never matched and never missed. An
unmatched detection whose crowd IoU (intersection / detection area) with a region of its own class
is ``> pos_thresh`` is *ignored*: it is left out of the AP. It is still given an error type below
(TIDE lists it with its errors), and fixing a Cls or Loc error can still turn it into a true
positive.

**AP.** Per class: the detections sorted by descending score (ties keep the order in which TIDE
collects them, see below), precision made monotone from the right, read at 101 recall points
(0, 0.01, ..., 1) at the first detection that reaches each recall, averaged, times 100. A class
counts in the mean if it has ground truth or any counted detection; with no ground truth its AP
is 0 (so detections of a class absent from the ground truth lower the mean). ``ap50`` is this mean.

**Error types** of every detection that is not a true positive, tested in this order (``IoU_own``
is the highest IoU with an object of the detection's class, used or not, ``IoU_other`` the highest
with an object of another class, ``IoU_used`` the highest with an already matched object of its
class, ``IoU_any`` the highest with any object):

1. image without (non-ignored) objects: **Bkg**;
2. ``bg_thresh <= IoU_own <= pos_thresh``: **Loc** (right class, box not good enough);
3. ``IoU_other >= pos_thresh``: **Cls** (right box, wrong class);
4. ``IoU_used >= pos_thresh``: **Dupe** (the object was already taken by a higher score);
5. ``IoU_any <= bg_thresh``: **Bkg** (fired on background);
6. otherwise **Both** (wrong class and poor box).

The object an error points at is the one giving that highest IoU (ties: the first in the file;
with ``bg_thresh`` 0 a Loc error touching nothing of its class points at the image's first
object). An object that is not matched is a **Miss** unless some Cls or Loc error points at it.

**Fixing one error type** (the main dAP, clipped at 0) rebuilds the AP with that type corrected:

* Cls / Loc: of the errors pointing at each free object (Cls and Loc errors compete together),
  the best-scored one (the earliest on ties) becomes a true positive (Cls: of the object's class;
  Loc: of its own class); every other error of the fixed type disappears (also those pointing at
  an already matched object);
* Dupe, Bkg, Both: those detections disappear;
* Miss: those objects are removed from the ground-truth count.

A class left with neither ground truth nor detections then drops out of the mean.

**Special errors** (not clipped): FalsePos scores every true positive 1 and every false positive
0 (perfect precision at the same recall); FalseNeg removes every unmatched object from the
ground-truth count (perfect recall at the same precision).

**Order of equal scores.** Ties are broken as TIDE's stable sort sees them: for the plain AP, by
image (ground-truth file order) and then score rank in the image; when rebuilding for a fix,
the error detections come before the untouched true positives, each group in that same order.

Differences from ``tidecv`` on malformed input: detections of an image or category that the
ground truth does not know raise :class:`~detkit.errors.DataError` (``tidecv`` silently drops the
first and counts the second as a class with AP 0), and annotations of an unknown image or category
are left out, as detkit's loader warns (``tidecv`` fails on the first and evaluates the second).
With no class to average, every AP is 0 (``tidecv`` divides by zero, e.g. on empty detections).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterator, Tuple

import numpy as np

from ..errors import ConfigError, DataError
from ..evaluation.coco_io import Detections, GroundTruth, check_detections
from ..evaluation.fast_coco import pairwise_iou

MAIN_ERRORS = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
SPECIAL_ERRORS = ("FalsePos", "FalseNeg")
MAX_DETS = 100  # per image, all classes together, as tidecv's COCO loader sets
PAIR_CHUNK = 2_000_000  # detection x object pairs held at once (bounds memory)
# the 101 recall points, computed as tidecv computes them (x / 100) so searchsorted sees equal values
RECALL_POINTS = np.arange(101) / 100

# error codes of a detection (index into _DET_ERROR_NAMES)
_NO_ERROR, _CLS, _LOC, _BOTH, _DUPE, _BKG = range(6)
_DET_ERROR_NAMES = (None, "Cls", "Loc", "Both", "Dupe", "Bkg")


def tide_errors(
    gt: GroundTruth,
    dets: Detections,
    pos_thresh: float = 0.5,
    bg_thresh: float = 0.1,
    max_dets: int = MAX_DETS,
    records: bool = True,
) -> Dict[str, Any]:
    """TIDE's error breakdown of ``dets`` against ``gt`` (rules in the module docstring).

    ``records=False`` leaves ``errors`` and ``true_positives`` empty: the numbers alone, without
    building one Python dict per detection (what the galleries need, and most of the time).

    Returns plain Python values:

    * ``main``: ``{"Cls", "Loc", "Both", "Dupe", "Bkg", "Miss"}`` -> dAP in AP points (0-100);
    * ``special``: ``{"FalsePos", "FalseNeg"}`` -> dAP;
    * ``ap50``: TIDE's AP at ``pos_thresh`` (0-100);
    * ``counts``: number of error instances per main type;
    * ``errors``: one record per error instance, by image (ground-truth file order), the
      detections' errors by descending score, then the image's misses in file order:
      ``{"type", "image_id", "score", "det_box", "det_category_id", "gt_box", "gt_category_id",
      "ignored"}``; the ``det_*`` fields and ``score`` are ``None`` for a Miss, the ``gt_*``
      fields name the object involved (Loc/Cls: the one it would match, Dupe: the one already
      taken, Both: the most overlapped one, Miss: the missed one) and are ``None`` for Bkg;
      ``ignored`` is true for a detection that an ignored region keeps out of the AP;
    * ``true_positives``: ``{"image_id", "score", "det_box", "category_id", "gt_box"}`` per
      matched detection, in the same order.

    Boxes are ``[x, y, w, h]``.
    """
    pos_thresh, bg_thresh, max_dets = _check_params(pos_thresh, bg_thresh, max_dets)
    try:
        check_detections(dets, gt, "detections")
    except ValueError as e:
        raise DataError(str(e)) from None

    img_ids = _image_order(gt)
    g, regions = _index_gt(gt, img_ids)
    d = _index_dets(dets, img_ids, max_dets)
    n_img = img_ids.size
    d_start, d_count = _spans(d["img"], n_img)
    g_start, g_count = _spans(g["img"], n_img)
    r_start, r_count = _spans(regions["img"], n_img)

    match = np.full(d["cls"].size, -1, np.int64)  # matched object per detection
    err = np.full(d["cls"].size, _NO_ERROR, np.int8)
    err_gt = np.full(d["cls"].size, -1, np.int64)  # the object an error points at
    used = np.zeros(g["cls"].size, bool)
    for pd, pg in _pair_chunks(d_start, d_count, g_start, g_count):
        iou = pairwise_iou(d["box"][pd], g["box"][pg], np.zeros(pd.size, bool))
        same = d["cls"][pd] == g["cls"][pg]
        _match_greedy(pd, pg, iou, same, d["rank"], pos_thresh, match, used)
        _classify(pd, pg, iou, same, used, match, pos_thresh, bg_thresh, err, err_gt)
    tp = match >= 0
    # every unmatched detection of an image without objects fired on background
    err[~tp & (g_count[d["img"]] == 0)] = _BKG
    ignored = _in_ignored_region(d, regions, d_start, d_count, r_start, r_count, pos_thresh)
    ignored &= ~tp

    # Cls and Loc errors pointing at a free object compete for it: the first (best-scored) wins
    fixable = np.flatnonzero(((err == _CLS) | (err == _LOC)) & (err_gt >= 0))
    fixable = fixable[~used[err_gt[fixable]]]
    _, first = np.unique(err_gt[fixable], return_index=True)
    best = np.zeros(d["cls"].size, bool)
    best[fixable[first]] = True
    claimed = used.copy()
    claimed[err_gt[fixable]] = True
    missed = ~claimed

    scores = _scenario_maps(d, g, tp, ignored, err, err_gt, best, missed)
    base = scores.pop("base")
    main = {name: max(scores[name] - base, 0.0) for name in MAIN_ERRORS}
    special = {name: scores[name] - base for name in SPECIAL_ERRORS}
    counts = {
        name: int(np.count_nonzero(err == code)) for code, name in enumerate(_DET_ERROR_NAMES)
    }
    counts["Miss"] = int(missed.sum())
    errors, true_positives = (
        _records(d, g, img_ids, tp, match, ignored, err, err_gt, missed) if records else ([], [])
    )
    return {
        "main": main,
        "special": special,
        "ap50": base,
        "counts": {name: counts[name] for name in MAIN_ERRORS},
        "errors": errors,
        "true_positives": true_positives,
    }


def _check_params(pos_thresh, bg_thresh, max_dets) -> Tuple[float, float, int]:
    try:
        pos, bg, md = float(pos_thresh), float(bg_thresh), int(max_dets)
    except (TypeError, ValueError):
        raise ConfigError(
            f"TIDE: pos_thresh and bg_thresh must be numbers and max_dets an integer, got "
            f"{pos_thresh!r}, {bg_thresh!r}, {max_dets!r}"
        ) from None
    # pos_thresh 0 would match a detection to an object it does not touch
    if not 0.0 < pos <= 1.0:
        raise ConfigError(f"TIDE: pos_thresh must be in (0, 1], got {pos_thresh}")
    if not 0.0 <= bg <= pos:
        raise ConfigError(
            f"TIDE: bg_thresh must be in [0, pos_thresh={pos}], got {bg_thresh} (a box below "
            "bg_thresh is background, one between the two thresholds a localisation error)"
        )
    if md < 1:
        raise ConfigError(f"TIDE: max_dets must be >= 1, got {max_dets}")
    return pos, bg, md


def _image_order(gt: GroundTruth) -> np.ndarray:
    """Image ids in ground-truth file order (it breaks score ties between images, as in TIDE)."""
    images = gt.dataset.get("images") if isinstance(gt.dataset, dict) else None
    if not images:
        return np.asarray(gt.image_ids, np.int64)
    ids = np.asarray([int(im["id"]) for im in images], np.int64)
    _, first = np.unique(ids, return_index=True)
    ids = ids[np.sort(first)]
    return ids[np.isin(ids, gt.image_ids)]


def _positions(ids: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Position of each id in ``order`` (-1 when absent)."""
    if order.size == 0:
        return np.full(ids.size, -1, np.int64)
    sorter = np.argsort(order, kind="stable")
    pos = sorter[np.searchsorted(order, ids, sorter=sorter).clip(0, order.size - 1)]
    return np.where(order[pos] == ids, pos, -1)


def _index_gt(gt: GroundTruth, img_ids: np.ndarray) -> Tuple[Dict, Dict]:
    """Objects and ignored regions as arrays sorted by (image position, file order); annotations
    of an unknown image or category are left out (the loader warned about them)."""
    img = _positions(np.asarray(gt.ann_image_id, np.int64), img_ids)
    cls = np.asarray(gt.ann_category_id, np.int64)
    keep = (img >= 0) & np.isin(cls, gt.cat_ids)
    ignore = np.asarray(gt.ann_crowd, bool).copy()
    if gt.ann_ignore is not None:
        ignore |= np.asarray(gt.ann_ignore, bool)
    box = np.asarray(gt.ann_bbox, np.float64).reshape(-1, 4)
    out = []
    for sel in (keep & ~ignore, keep & ignore):
        index = np.flatnonzero(sel)
        index = index[np.argsort(img[index], kind="stable")]
        out.append({"img": img[index], "cls": cls[index], "box": box[index]})
    return out[0], out[1]


def _index_dets(dets: Detections, img_ids: np.ndarray, max_dets: int) -> Dict:
    """Detections in TIDE's collection order (image position, then descending score, equal scores
    in results order), each image cut to its ``max_dets`` best."""
    img = _positions(dets.image_id, img_ids)
    order = np.lexsort((np.arange(img.size), -dets.score, img))
    img = img[order]
    start, _ = _spans(img, img_ids.size)
    rank = np.arange(img.size) - start[img]  # score rank inside the image
    top = rank < max_dets
    keep = order[top]
    return {
        "img": img[top],
        "rank": rank[top],
        "cls": dets.category_id[keep],
        "box": dets.bbox[keep],
        "score": dets.score[keep],
    }


def _spans(img: np.ndarray, n_img: int) -> Tuple[np.ndarray, np.ndarray]:
    """(start, count) per image position of an array sorted by image position."""
    count = np.bincount(img, minlength=n_img)
    return np.cumsum(count) - count, count


def _pair_chunks(
    d_start: np.ndarray, d_count: np.ndarray, g_start: np.ndarray, g_count: np.ndarray
) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """All (detection, object) pairs of the same image, whole images per chunk of about
    PAIR_CHUNK pairs; row-major, so each detection's pairs are contiguous and in object order."""
    n_pairs = d_count * g_count
    imgs = np.flatnonzero(n_pairs)
    ends = np.cumsum(n_pairs[imgs])
    lo = 0
    while lo < imgs.size:
        before = ends[lo - 1] if lo else 0
        hi = max(int(np.searchsorted(ends, before + PAIR_CHUNK, "right")), lo + 1)
        sel = imgs[lo:hi]
        per = n_pairs[sel]
        grp = np.repeat(np.arange(sel.size), per)
        local = np.arange(per.sum()) - np.repeat(np.cumsum(per) - per, per)
        n_gt = g_count[sel][grp]
        yield d_start[sel][grp] + local // n_gt, g_start[sel][grp] + local % n_gt
        lo = hi


def _match_greedy(pd, pg, iou, same, rank, pos_thresh, match, used) -> None:
    """TIDE's greedy matching, every image of the chunk at once: round r lets each image's r-th
    detection take its best free candidate (same class, IoU >= pos_thresh)."""
    cand = same & (iou >= pos_thresh)
    cd, cg, ci = pd[cand], pg[cand], iou[cand]
    # by round, then detection, then highest IoU, then object file order (argmax keeps the first)
    order = np.lexsort((cg, -ci, cd, rank[cd]))
    cd, cg = cd[order], cg[order]
    rounds = rank[cd]
    bounds = np.flatnonzero(np.diff(rounds)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, rounds.size]):
        sd, sg = cd[lo:hi], cg[lo:hi]
        free = ~used[sg]
        sd, sg = sd[free], sg[free]
        if sd.size == 0:
            continue
        first = np.r_[True, sd[1:] != sd[:-1]]
        match[sd[first]] = sg[first]
        used[sg[first]] = True


def _row_max(values, starts, row_of):
    """Per row of contiguous pairs: the max and the pair index of its first occurrence."""
    peak = np.maximum.reduceat(values, starts)
    index = np.where(values == peak[row_of], np.arange(values.size), values.size)
    return peak, np.minimum.reduceat(index, starts)


def _classify(pd, pg, iou, same, used, match, pos_thresh, bg_thresh, err, err_gt) -> None:
    """Error type of every unmatched detection of the chunk (all its images have objects)."""
    starts = np.flatnonzero(np.r_[True, pd[1:] != pd[:-1]])
    row_of = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, pd.size]))
    det = pd[starts]
    own, own_at = _row_max(np.where(same, iou, 0.0), starts, row_of)
    other, other_at = _row_max(np.where(same, 0.0, iou), starts, row_of)
    dup, dup_at = _row_max(np.where(same & used[pg], iou, 0.0), starts, row_of)
    any_, any_at = _row_max(iou, starts, row_of)

    code = np.full(det.size, _BOTH, np.int8)
    at = any_at.copy()
    # assigned from the last test to the first, so the first that holds wins
    is_bkg = any_ <= bg_thresh
    code[is_bkg], at[is_bkg] = _BKG, -1
    is_dup = dup >= pos_thresh
    code[is_dup], at[is_dup] = _DUPE, dup_at[is_dup]
    is_cls = other >= pos_thresh
    code[is_cls], at[is_cls] = _CLS, other_at[is_cls]
    is_loc = (bg_thresh <= own) & (own <= pos_thresh)
    code[is_loc], at[is_loc] = _LOC, own_at[is_loc]

    fp = match[det] < 0
    err[det[fp]] = code[fp]
    err_gt[det[fp]] = np.where(at[fp] >= 0, pg[np.maximum(at[fp], 0)], -1)


def _in_ignored_region(d, regions, d_start, d_count, r_start, r_count, pos_thresh) -> np.ndarray:
    """Detections whose crowd IoU with an ignored region of their class is > pos_thresh."""
    inside = np.zeros(d["cls"].size, bool)
    for pd, pr in _pair_chunks(d_start, d_count, r_start, r_count):
        ciou = pairwise_iou(d["box"][pd], regions["box"][pr], np.ones(pd.size, bool))
        hit = (ciou > pos_thresh) & (d["cls"][pd] == regions["cls"][pr])
        inside[pd[hit]] = True
    return inside


def _scenario_maps(d, g, tp, ignored, err, err_gt, best, missed) -> Dict[str, float]:
    """The mean AP of the plain evaluation ("base") and of each version with errors fixed."""
    classes = np.unique(np.concatenate([g["cls"], d["cls"][~ignored]]))
    n_gt = np.bincount(np.searchsorted(classes, g["cls"]), minlength=classes.size)
    n_missed = np.bincount(np.searchsorted(classes, g["cls"][missed]), minlength=classes.size)
    n_matched = np.bincount(np.searchsorted(classes, d["cls"][tp]), minlength=classes.size)
    cls, score = d["cls"], d["score"]
    counted = tp | ~ignored
    order = np.arange(tp.size)
    # when TIDE rebuilds the AP for a fix, the error detections come before the true positives
    rebuilt = np.where(tp, order + tp.size, order)

    def mean_ap(sel, n_gt, cls=cls, score=score, is_tp=tp, tie=rebuilt):
        return _mean_ap(classes, n_gt, cls[sel], score[sel], is_tp[sel], tie[sel])

    out = {"base": mean_ap(counted, n_gt, tie=order)}
    for code in (_CLS, _LOC, _BOTH, _DUPE, _BKG):
        fixed = ~tp & (err == code)
        keep = counted & ~fixed
        now_cls, now_tp = cls, tp
        if code in (_CLS, _LOC):
            # the winner of each free object becomes a true positive, ignored or not: of the
            # object's class for Cls, of its own for Loc (with bg_thresh 0 the "object" of a Loc
            # error can be of another class, and TIDE still keeps the detection's class)
            promoted = fixed & best
            if code == _CLS:
                now_cls = np.where(promoted, g["cls"][np.maximum(err_gt, 0)], cls)
            now_tp = tp | promoted
            keep = keep | promoted
        out[_DET_ERROR_NAMES[code]] = mean_ap(keep, n_gt, cls=now_cls, is_tp=now_tp)
    out["Miss"] = mean_ap(counted, n_gt - n_missed)
    out["FalseNeg"] = mean_ap(counted, n_matched)
    out["FalsePos"] = mean_ap(counted, n_gt, score=np.where(tp, 1.0, 0.0))
    return out


def _mean_ap(classes, n_gt, cls, score, is_tp, tie) -> float:
    """TIDE's mean over classes of the 101-point AP (0-100); a class with neither objects nor
    detections is left out, one without objects has AP 0."""
    k = classes.size
    c = np.searchsorted(classes, cls)
    order = np.lexsort((tie, -score, c))
    c, is_tp = c[order], is_tp[order]
    start = np.searchsorted(c, np.arange(k))
    end = np.searchsorted(c, np.arange(k), "right")
    aps = []
    for j in range(k):
        n = end[j] - start[j]
        if n == 0 and n_gt[j] == 0:
            continue
        if n_gt[j] == 0 or n == 0:
            aps.append(0.0)
            continue
        hits = np.cumsum(is_tp[start[j] : end[j]])
        precision = hits / np.arange(1, n + 1)
        recall = hits / n_gt[j]
        precision = np.maximum.accumulate(precision[::-1])[::-1]
        at = np.searchsorted(recall, RECALL_POINTS, side="left")
        curve = np.zeros(RECALL_POINTS.size)
        reached = at < n
        curve[reached] = precision[at[reached]]
        # a plain left-to-right sum, as tidecv adds, so each class's AP is bit-identical to it
        aps.append(sum(curve.tolist()) / curve.size * 100)
    return math.fsum(aps) / len(aps) if aps else 0.0


def _records(d, g, img_ids, tp, match, ignored, err, err_gt, missed):
    """The error and true-positive records, JSON-ready, in TIDE's order."""
    image_id = img_ids.tolist()
    det_box = d["box"].tolist()
    gt_box = g["box"].tolist()
    gt_cls = g["cls"].tolist()
    g_img = g["img"].tolist()
    d_img, d_cls, d_score = d["img"].tolist(), d["cls"].tolist(), d["score"].tolist()
    d_err, d_err_gt, d_ignored = err.tolist(), err_gt.tolist(), ignored.tolist()

    bad = np.flatnonzero(~tp)
    miss = np.flatnonzero(missed)
    # by image, the detections' errors (already in score order) before the misses
    key_img = np.concatenate([d["img"][bad], g["img"][miss]])
    key_kind = np.r_[np.zeros(bad.size, np.int8), np.ones(miss.size, np.int8)]
    key_idx = np.concatenate([bad, miss])
    order = np.lexsort((key_idx, key_kind, key_img))
    errors = []
    for kind, i in zip(key_kind[order].tolist(), key_idx[order].tolist()):
        if kind:
            errors.append(
                {
                    "type": "Miss",
                    "image_id": image_id[g_img[i]],
                    "score": None,
                    "det_box": None,
                    "det_category_id": None,
                    "gt_box": gt_box[i],
                    "gt_category_id": gt_cls[i],
                    "ignored": False,
                }
            )
            continue
        j = d_err_gt[i]
        errors.append(
            {
                "type": _DET_ERROR_NAMES[d_err[i]],
                "image_id": image_id[d_img[i]],
                "score": d_score[i],
                "det_box": det_box[i],
                "det_category_id": d_cls[i],
                "gt_box": gt_box[j] if j >= 0 else None,
                "gt_category_id": gt_cls[j] if j >= 0 else None,
                "ignored": d_ignored[i],
            }
        )
    true_positives = [
        {
            "image_id": image_id[d_img[i]],
            "score": d_score[i],
            "det_box": det_box[i],
            "category_id": d_cls[i],
            "gt_box": gt_box[m],
        }
        for i, m in zip(np.flatnonzero(tp).tolist(), match[tp].tolist())
    ]
    return errors, true_positives
