"""Vectorised COCO bbox evaluation that reproduces pycocotools' 12 numbers exactly.

Every rule below is pycocotools' (``COCOeval`` with ``iouType="bbox"``); this file computes the same
quantities without looping over images in Python:

* Groups are (image, category) pairs.  Detections are sorted by score within a group (stable, so
  ties keep their order in the results list) and only the first ``max(MAX_DETS)`` are kept.
* IoU is evaluated with pycocotools' float arithmetic (``x + w`` right edges, ``(da + ga) - inter``
  unions; a crowd ground truth divides by the detection area instead).
* Ground truth is *ignored* when it is crowd or its ``area`` field lies outside the area range.
  Greedy matching walks the detections by score; each takes, among the still-free ground truths
  (crowds never get used up) with IoU >= min(t, 1 - 1e-10), the one with the highest IoU, preferring
  non-ignored ground truth, ties going to the later one in file order.  A detection matched to an
  ignored ground truth, or unmatched with its box area (w*h) outside the range, is ignored.
* Per category, the detections of all images are merged by score (stable: image id, then the order
  above), precision/recall are cumulated, precision is made monotone from the right and read at the
  101 recall thresholds with a left-sided search.  Categories without (non-ignored) ground truth
  give -1, and the summary numbers average the entries that are not -1.

The thresholds and ``maxDets`` are parameters (:class:`EvalParams`), as pycocotools' ``Params``: the
error analysis (:mod:`detkit.analysis`) evaluates at IoU 0.75/0.5/0.1 with maxDets 100, and marks
extra ground truth as ignored (``GroundTruth.ann_ignore``, ORed with crowd as COCO's MATLAB code does).

Only the matching is sequential (detection after detection); it runs once per detection rank for all
(image, category) groups at the same time, padded into buckets of similar size, and skips the
detections and ground truths that overlap nothing at IoU >= 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

from .coco_io import Detections, GroundTruth

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # the same floats as pycocotools' Params.iouThrs
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)  # == Params.recThrs
MAX_DETS = (1, 10, 100)
AREA_RANGES = np.array([[0.0, 1e10], [0.0, 32.0**2], [32.0**2, 96.0**2], [96.0**2, 1e10]])
AREA_NAMES = ("all", "small", "medium", "large")
STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)

_EPS = np.spacing(1)  # the epsilon pycocotools adds to the precision denominator
PAIR_CHUNK = 2_000_000  # detection x ground-truth pairs per IoU batch (bounds memory)
MATCH_CELLS = 4_000_000  # groups x detections x ground truths per matching batch
_NO_MATCH, _MATCH, _MATCH_IGNORED = 0, 1, 2


@dataclass(frozen=True)
class EvalParams:
    """What pycocotools' ``Params`` lets a caller change: IoU thresholds and maxDets (ascending)."""

    iou_thresholds: Tuple[float, ...] = tuple(IOU_THRESHOLDS.tolist())
    max_dets: Tuple[int, ...] = MAX_DETS

    @property
    def match_thresholds(self) -> np.ndarray:
        # pycocotools matches at min(t, 1 - 1e-10) so that t = 1 can still be met
        return np.minimum(np.asarray(self.iou_thresholds, np.float64), 1 - 1e-10)


COCO_PARAMS = EvalParams()


@dataclass
class Matching:
    """The evaluator's per-detection decisions, for callers that need more than the curves.

    ``dets`` holds the kept detections (the best ``max(max_dets)`` per image and category) as arrays:
    ``orig`` (index into the input :class:`Detections`), ``img``/``cat`` (indices into the image and
    category id lists), ``score``, ``rank`` (within its image and category), ``box``, ``outside``
    (A, N: box area outside each area range). ``codes`` (A, T, N): 0 unmatched, 1 matched to regular
    ground truth, 2 matched to ignored ground truth. ``n_gt`` (K, A): non-ignored ground truth.
    """

    dets: Dict[str, np.ndarray]
    codes: np.ndarray
    n_gt: np.ndarray
    img_ids: np.ndarray
    cat_ids: np.ndarray


@dataclass
class COCOEvalOutput:
    """What both engines return: the 12 stats plus pycocotools-shaped accumulators."""

    stats: np.ndarray  # (12,) in STAT_NAMES order
    precision: np.ndarray  # (T, R, K, A, M), -1 where a category has no ground truth
    recall: np.ndarray  # (T, K, A, M)
    cat_ids: np.ndarray  # (K,) the category id of each K index


def evaluate_fast(
    gt: GroundTruth, dets: Detections, img_ids: Optional[np.ndarray] = None
) -> COCOEvalOutput:
    """COCO bbox evaluation of ``dets`` on the images ``img_ids`` (default: all ground-truth images)."""
    precision, recall, _ = evaluate_with(gt, dets, img_ids, COCO_PARAMS)
    return COCOEvalOutput(summarize(precision, recall), precision, recall, gt.cat_ids)


def evaluate_with(
    gt: GroundTruth,
    dets: Detections,
    img_ids: Optional[np.ndarray] = None,
    params: EvalParams = COCO_PARAMS,
) -> Tuple[np.ndarray, np.ndarray, Matching]:
    """pycocotools' ``evaluate()`` + ``accumulate()`` with ``params``: precision (T, R, K, A, M),
    recall (T, K, A, M) and the :class:`Matching` they were cumulated from."""
    img_ids = gt.image_ids if img_ids is None else np.unique(np.asarray(img_ids, np.int64))
    cat_ids = gt.cat_ids
    g = _index_gt(gt, img_ids, cat_ids)
    d = _index_dets(dets, img_ids, cat_ids, params.max_dets[-1])
    codes = _match_all(g, d, params.match_thresholds)
    precision, recall, n_gt = _accumulate(g, d, codes, len(cat_ids), params)
    return precision, recall, Matching(d, codes, n_gt, img_ids, cat_ids)


def _area_outside(area: np.ndarray) -> np.ndarray:
    """(A, N) True where ``area`` falls outside each area range (the bounds themselves are inside)."""
    return (area[None] < AREA_RANGES[:, :1]) | (area[None] > AREA_RANGES[:, 1:])


def _index_gt(gt: GroundTruth, img_ids: np.ndarray, cat_ids: np.ndarray) -> Dict[str, np.ndarray]:
    keep = np.isin(gt.ann_image_id, img_ids) & np.isin(gt.ann_category_id, cat_ids)
    img = np.searchsorted(img_ids, gt.ann_image_id[keep])
    cat = np.searchsorted(cat_ids, gt.ann_category_id[keep])
    key = img * len(cat_ids) + cat
    order = np.argsort(key, kind="stable")  # group by (image, category), file order inside
    crowd = gt.ann_crowd[keep][order]
    flagged = crowd if gt.ann_ignore is None else crowd | gt.ann_ignore[keep][order]
    ignore = _area_outside(gt.ann_area[keep][order]) | flagged[None]
    return {
        "key": key[order],
        "cat": cat[order],
        "box": gt.ann_bbox[keep][order],
        "crowd": crowd,
        "ignore": ignore,
    }


def _index_dets(
    dets: Detections, img_ids: np.ndarray, cat_ids: np.ndarray, max_det: int
) -> Dict[str, np.ndarray]:
    keep = np.flatnonzero(np.isin(dets.image_id, img_ids) & np.isin(dets.category_id, cat_ids))
    img = np.searchsorted(img_ids, dets.image_id[keep])
    cat = np.searchsorted(cat_ids, dets.category_id[keep])
    key = img * len(cat_ids) + cat
    score = dets.score[keep]
    order = np.lexsort((-score, key))  # stable: equal scores keep their results-list order
    rank = _rank_in_group(key[order])
    top = order[rank < max_det]  # pycocotools keeps the best max(maxDets) per group
    box = dets.bbox[keep][top]
    return {
        "key": key[top],
        "cat": cat[top],
        "img": img[top],
        "score": score[top],
        "orig": keep[top],
        "rank": rank[rank < max_det],
        "box": box,
        "outside": _area_outside(box[:, 2] * box[:, 3]),
    }


def _rank_in_group(key: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal (sorted) keys."""
    idx = np.arange(key.size)
    first = np.r_[True, key[1:] != key[:-1]]
    return idx - np.maximum.accumulate(np.where(first, idx, 0))


def pairwise_iou(dbox: np.ndarray, gbox: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of XYWH boxes paired row by row, in pycocotools' arithmetic (crowd: inter / det area)."""
    right = np.minimum(dbox[:, 0] + dbox[:, 2], gbox[:, 0] + gbox[:, 2])
    bottom = np.minimum(dbox[:, 1] + dbox[:, 3], gbox[:, 1] + gbox[:, 3])
    iw = right - np.maximum(dbox[:, 0], gbox[:, 0])
    ih = bottom - np.maximum(dbox[:, 1], gbox[:, 1])
    overlap = (iw > 0) & (ih > 0)
    inter = iw * ih
    d_area = dbox[:, 2] * dbox[:, 3]
    union = np.where(crowd, d_area, d_area + gbox[:, 2] * gbox[:, 3] - inter)
    iou = np.zeros(iw.shape)
    np.divide(inter, union, out=iou, where=overlap)
    return iou


def _candidate_pairs(g: Dict, d: Dict, lowest: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (det, gt, iou) in the same group with iou >= the lowest threshold, in (group, det, gt) order."""
    dk, ds, dc = np.unique(d["key"], return_index=True, return_counts=True)  # keys are sorted
    gk, gs, gc = np.unique(g["key"], return_index=True, return_counts=True)
    _, di, gi = np.intersect1d(dk, gk, assume_unique=True, return_indices=True)
    ds, dc, gs, gc = ds[di], dc[di], gs[gi], gc[gi]
    n_pairs = dc * gc
    ends = np.cumsum(n_pairs)
    out = []
    lo = 0
    while lo < len(n_pairs):
        hi = max(
            int(np.searchsorted(ends, (ends[lo - 1] if lo else 0) + PAIR_CHUNK, "right")), lo + 1
        )
        per = n_pairs[lo:hi]
        grp = np.repeat(np.arange(hi - lo), per)
        local = np.arange(per.sum()) - np.repeat(np.cumsum(per) - per, per)
        n_gt = gc[lo:hi][grp]
        det = ds[lo:hi][grp] + local // n_gt
        gt = gs[lo:hi][grp] + local % n_gt
        iou = pairwise_iou(d["box"][det], g["box"][gt], g["crowd"][gt])
        hit = iou >= lowest
        out.append((det[hit], gt[hit], iou[hit]))
        lo = hi
    if not out:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return tuple(np.concatenate(parts) for parts in zip(*out))


def _match_all(g: Dict, d: Dict, thresholds: np.ndarray) -> np.ndarray:
    """(A, T, N_det) int8 codes: 0 unmatched, 1 matched to regular GT, 2 matched to ignored GT."""
    A, T = len(AREA_RANGES), len(thresholds)
    codes = np.zeros((A, T, d["key"].size), np.int8)
    pair_det, pair_gt, pair_iou = _candidate_pairs(g, d, float(thresholds.min()))
    if pair_det.size == 0:
        return codes
    # only detections / ground truths with some IoU >= the lowest threshold take part; renumber
    # them per group
    dets, det_inv = np.unique(pair_det, return_inverse=True)
    gts, gt_inv = np.unique(pair_gt, return_inverse=True)
    _, det_group, n_det = np.unique(d["key"][dets], return_inverse=True, return_counts=True)
    gt_group, n_gt = np.unique(g["key"][gts], return_inverse=True, return_counts=True)[1:]
    det_col, gt_col = _rank_in_group(d["key"][dets]), _rank_in_group(g["key"][gts])
    problem = {
        "pair_group": det_group[det_inv],
        "pair_row": det_col[det_inv],
        "pair_col": gt_col[gt_inv],
        "pair_iou": pair_iou,
        "n_det": n_det,
        "det": dets,
        "det_group": det_group,
        "det_col": det_col,
        "gt_group": gt_group,
        "gt_col": gt_col,
        "gt_ignore": g["ignore"][:, gts],
        "gt_crowd": g["crowd"][gts],
        "thresholds": thresholds,
    }
    width = 1 << np.ceil(np.log2(n_gt)).astype(int)  # bucket groups by padded GT count
    for w in np.unique(width):
        members = np.flatnonzero(width == w)
        members = members[np.argsort(-n_det[members], kind="stable")]  # most detections first
        step = max(1, MATCH_CELLS // (int(n_det[members[0]]) * int(w)))
        for i in range(0, len(members), step):
            det_index, out = _match_groups(members[i : i + step], int(w), problem)
            codes[:, :, det_index] = out.transpose(1, 2, 0)
    return codes


def _match_groups(members: np.ndarray, w: int, p: Dict) -> Tuple[np.ndarray, np.ndarray]:
    """Pad the groups ``members`` (sorted by detection count, descending) to (B, D, w) and match.
    Returns the detections' indices and their (n, A, T) codes."""
    slot = np.full(len(p["n_det"]), -1)
    slot[members] = np.arange(len(members))
    B, D, A = len(members), int(p["n_det"][members[0]]), p["gt_ignore"].shape[0]
    ious = np.full((B, D, w), -1.0)
    mine = slot[p["pair_group"]] >= 0
    ious[slot[p["pair_group"]][mine], p["pair_row"][mine], p["pair_col"][mine]] = p["pair_iou"][
        mine
    ]
    ignore = np.ones((B, A, w), bool)
    crowd = np.zeros((B, w), bool)
    mine = slot[p["gt_group"]] >= 0
    ignore[slot[p["gt_group"]][mine], :, p["gt_col"][mine]] = p["gt_ignore"][:, mine].T
    crowd[slot[p["gt_group"]][mine], p["gt_col"][mine]] = p["gt_crowd"][mine]
    mine = slot[p["det_group"]] >= 0
    rows, cols = slot[p["det_group"]][mine], p["det_col"][mine]
    out = _greedy_match(ious, ignore, crowd, p["n_det"][members], p["thresholds"])
    return p["det"][mine], out[rows, cols]


def _greedy_match(
    ious: np.ndarray,
    ignore: np.ndarray,
    crowd: np.ndarray,
    n_det: np.ndarray,
    thresholds: np.ndarray,
) -> np.ndarray:
    """Greedy matching for B groups at once.

    ious (B, D, G) padded with -1, detections in score order; ignore (B, A, G); crowd (B, G);
    n_det (B,) real detections per group, sorted descending; thresholds (T,) as matched.
    Returns (B, D, A, T) int8 codes.
    """
    B, D, G = ious.shape
    A, T = ignore.shape[1], len(thresholds)
    taken = np.zeros((B, A, T, G), bool)
    regular = ~ignore[:, :, None, :]
    reusable = crowd[:, None, None, :]
    out = np.zeros((B, D, A, T), np.int8)
    for k in range(D):
        nb = int(np.count_nonzero(n_det > k))
        iou = ious[:nb, k]
        cand = (iou[:, None, None, :] >= thresholds[None, None, :, None]) & (
            ~taken[:nb] | reusable[:nb]
        )
        cand_regular = cand & regular[:nb]
        has_regular = cand_regular.any(-1)
        cand = np.where(has_regular[..., None], cand_regular, cand)  # ignored GT only as a fallback
        matched = cand.any(-1)
        if not matched.any():
            continue
        best = (
            G - 1 - np.where(cand, iou[:, None, None, :], -1.0)[..., ::-1].argmax(-1)
        )  # ties: last
        b, a, t = np.nonzero(matched)
        taken[b, a, t, best[b, a, t]] = True
        out[:nb, k] = np.where(matched, np.where(has_regular, _MATCH, _MATCH_IGNORED), _NO_MATCH)
    return out


def _accumulate(
    g: Dict, d: Dict, codes: np.ndarray, K: int, params: EvalParams
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    A, R = len(AREA_RANGES), len(RECALL_THRESHOLDS)
    T, M = len(params.iou_thresholds), len(params.max_dets)
    npig = np.stack(
        [np.bincount(g["cat"], weights=~g["ignore"][a], minlength=K) for a in range(A)], axis=1
    ).astype(np.int64)  # (K, A) non-ignored GT
    # per category: score descending, then image id, then the order inside the image
    order = np.lexsort((d["orig"], d["img"], -d["score"], d["cat"]))
    codes = np.ascontiguousarray(codes[:, :, order]).reshape(A * T, -1)  # row cumsums need C order
    rank, cat = d["rank"][order], d["cat"][order]
    tp_all = codes == _MATCH
    fp_all = (codes == _NO_MATCH) & ~np.repeat(d["outside"][:, order], T, axis=0)
    precision = -np.ones((T, R, K, A, M))
    recall = -np.ones((T, K, A, M))
    if K == 0:
        return precision, recall, npig
    for m, max_det in enumerate(params.max_dets):
        keep = rank < max_det
        if keep.all():
            tp, fp, cat_m = tp_all, fp_all, cat
        else:
            tp, fp, cat_m = (np.compress(keep, x, axis=-1) for x in (tp_all, fp_all, cat))
        prec, rec = _precision_recall(tp, fp, cat_m, npig, T)
        precision[..., m] = prec.reshape(A, T, K, R).transpose(1, 3, 2, 0)
        recall[..., m] = rec.reshape(A, T, K).transpose(1, 2, 0)
    return precision, recall, npig


def _precision_recall(
    tp: np.ndarray, fp: np.ndarray, cat: np.ndarray, npig: np.ndarray, T: int
) -> Tuple[np.ndarray, np.ndarray]:
    """Interpolated precision (rows*K, R) and recall (rows*K,) for each (row=(a, t), category).

    Only true positives move recall, so precision at recall threshold r is the best precision at or
    after the first true positive that reaches it; that is a max over a suffix of the true positives.
    """
    rows, K = tp.shape[0], npig.shape[0]
    tp, fp = np.ascontiguousarray(tp), np.ascontiguousarray(fp)
    tp_cum = np.cumsum(tp, axis=1, dtype=np.int32)  # int32: several times faster than int64 here
    fp_cum = np.cumsum(fp, axis=1, dtype=np.int32)
    start = np.searchsorted(cat, np.arange(K))  # cat is sorted: category segments
    zero = np.zeros((rows, 1), np.int32)
    tp_base = np.concatenate([zero, tp_cum], axis=1)[:, start]
    fp_base = np.concatenate([zero, fp_cum], axis=1)[:, start]
    row, pos = np.nonzero(tp)
    k = cat[pos]
    j = (tp_cum[row, pos] - tp_base[row, k]).astype(np.float64)
    f = (fp_cum[row, pos] - fp_base[row, k]).astype(np.float64)
    seg = row * K + k
    count = np.bincount(seg, minlength=rows * K)
    offset = np.cumsum(count + 1) - (count + 1)  # each segment is followed by a 0 sentinel
    flat = np.zeros(int(offset[-1] + count[-1] + 1))
    flat[offset[seg] + j.astype(np.int64) - 1] = j / (f + j + _EPS)
    n_gt = npig[:, np.arange(rows) // T].T.reshape(-1)  # (rows*K,)
    need = _tp_needed(n_gt)
    idx = offset[:, None] + np.minimum(np.maximum(need, 1) - 1, count[:, None])
    blocks = np.maximum.reduceat(flat, idx.reshape(-1)).reshape(rows * K, -1)
    q = np.maximum.accumulate(blocks[:, ::-1], axis=1)[:, ::-1]
    has_gt = n_gt > 0
    prec = np.where(has_gt[:, None], q, -1.0)
    rec = np.where(has_gt, count / np.maximum(n_gt, 1), -1.0)
    return prec, rec


def _tp_needed(n_gt: np.ndarray) -> np.ndarray:
    """(S, R): the fewest true positives j with float(j) / n_gt >= each recall threshold."""
    n = np.maximum(n_gt, 1).astype(np.float64)[:, None]
    thr = RECALL_THRESHOLDS[None]
    j = np.ceil(thr * n)
    for _ in range(4):  # ceil() of a rounded product can be off by one; settle it exactly
        lower = (j > 0) & ((j - 1) / n >= thr)
        higher = j / n < thr
        if not (lower.any() or higher.any()):
            return j.astype(np.int64)
        j = j - lower + higher
    raise RuntimeError("internal error: recall thresholds did not settle")  # never silently wrong


def summarize(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """The 12 COCO numbers (STAT_NAMES order) from pycocotools-shaped precision/recall arrays."""

    def mean(values: np.ndarray) -> float:
        valid = values[values > -1]
        return float(np.mean(valid)) if valid.size else -1.0

    t50 = np.flatnonzero(IOU_THRESHOLDS == 0.5)
    t75 = np.flatnonzero(IOU_THRESHOLDS == 0.75)
    m100 = MAX_DETS.index(100)
    return np.array(
        [
            mean(precision[:, :, :, 0, m100]),
            mean(precision[t50][:, :, :, 0, m100]),
            mean(precision[t75][:, :, :, 0, m100]),
            *(mean(precision[:, :, :, a, m100]) for a in (1, 2, 3)),
            *(mean(recall[:, :, 0, m]) for m in range(len(MAX_DETS))),
            *(mean(recall[:, :, a, m100]) for a in (1, 2, 3)),
        ]
    )
