"""PASCAL VOC detection AP with the VOC devkit's rules, and the model-facing ``VOCEvaluator``.

The devkit's rules:

* Boxes are compared in VOC's 1-based *inclusive* integer pixel convention: a box ``x1..x2`` is
  ``x2 - x1 + 1`` pixels wide, for intersections and areas alike.  detkit stores boxes 0-based and
  exclusive (``datasets`` subtract 1 from VOC's ``xmin``/``ymin`` and keep ``xmax``/``ymax``), so a
  detkit box ``(x1, y1, x2, y2)`` is the devkit box ``(x1 + 1, y1 + 1, x2, y2)``; this module
  converts with :func:`detkit_to_devkit_boxes` and the width is then ``x2 - x1`` as in detkit.
* Detections of a class are taken by descending score (ties keep their input order).  Each is
  compared with *every* ground truth of its image and assigned to the one with the highest IoU
  (the first of equal ones).  It is a true positive if that IoU is **strictly greater** than the
  threshold (``iou_strict=False`` accepts ``>=``, as pycocotools does), the ground truth is not
  ``difficult`` and not yet taken; a second detection of the same ground truth is a false positive
  (even if another ground truth overlaps it); a detection whose best ground truth is difficult
  counts as neither; anything else is a false positive.
* Recall divides by the number of non-difficult ground truths.  AP is either VOC2007's 11-point
  interpolation (mean over t = 0, 0.1, ..., 1 of the best precision at recall >= t) or the area under
  the precision envelope (VOC2010+).  A class without non-difficult ground truth has no AP: it is
  reported as -1 and left out of the mAP.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..registry import EVALUATORS
from ..utils.distributed import gather_to_main
from .common import (
    check_processed_ids,
    format_table,
    per_class_table,
    to_numpy,
    write_json,
)

logger = logging.getLogger("detkit")

_ELEVEN_POINTS = np.arange(11) * 0.1  # the devkit's Python port: np.arange(0., 1.1, 0.1)


def detkit_to_devkit_boxes(boxes: np.ndarray) -> np.ndarray:
    """detkit 0-based XYXY -> VOC devkit 1-based inclusive ``(x1 + 1, y1 + 1, x2, y2)``."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2] + 1.0, boxes[:, 2:]], axis=1)


def voc_iou(det: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Row-by-row IoU of devkit boxes (1-based inclusive pixels: widths are ``x2 - x1 + 1``)."""
    iw = np.maximum(np.minimum(det[:, 2], gt[:, 2]) - np.maximum(det[:, 0], gt[:, 0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(det[:, 3], gt[:, 3]) - np.maximum(det[:, 1], gt[:, 1]) + 1.0, 0.0)
    inter = iw * ih
    det_area = (det[:, 2] - det[:, 0] + 1.0) * (det[:, 3] - det[:, 1] + 1.0)
    gt_area = (gt[:, 2] - gt[:, 0] + 1.0) * (gt[:, 3] - gt[:, 1] + 1.0)
    return inter / (det_area + gt_area - inter)


def average_precision(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """VOC AP from cumulative recall/precision (detections by descending score)."""
    if use_07_metric:
        best = [
            precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in _ELEVEN_POINTS
        ]
        return float(np.sum(best) / 11.0)
    rec = np.concatenate([[0.0], recall, [1.0]])
    prec = np.concatenate([[0.0], precision, [0.0]])
    prec = np.maximum.accumulate(prec[::-1])[::-1]  # precision envelope
    steps = np.flatnonzero(rec[1:] != rec[:-1])
    return float(np.sum((rec[steps + 1] - rec[steps]) * prec[steps + 1]))


def _best_gt(
    det_img: np.ndarray, det_boxes: np.ndarray, gt_img: np.ndarray, gt_boxes: np.ndarray
) -> Tuple[np.ndarray, np.ndarray]:
    """For each detection: highest IoU with a ground truth of its image (-inf if none) and that
    ground truth's index (first of equal ones; -1 if none).  ``gt_img`` must be sorted."""
    uniq, start, count = np.unique(gt_img, return_index=True, return_counts=True)
    slot = np.minimum(np.searchsorted(uniq, det_img), max(len(uniq) - 1, 0))
    found = (uniq[slot] == det_img) if len(uniq) else np.zeros(len(det_img), bool)
    n = np.where(found, count[slot] if len(uniq) else 0, 0)
    best_iou, best_gt = np.full(len(det_img), -np.inf), np.full(len(det_img), -1)
    if n.sum() == 0:
        return best_iou, best_gt
    dets = np.flatnonzero(n)
    first = np.cumsum(n[dets]) - n[dets]  # where each detection's pairs begin
    local = np.arange(n.sum()) - np.repeat(first, n[dets])
    pair_gt = np.repeat(start[slot[dets]], n[dets]) + local
    iou = voc_iou(np.repeat(det_boxes[dets], n[dets], axis=0), gt_boxes[pair_gt])
    best = np.maximum.reduceat(iou, first)
    is_best = iou == np.repeat(best, n[dets])
    first_best = np.minimum.reduceat(np.where(is_best, local, np.iinfo(np.int64).max), first)
    best_iou[dets] = best
    best_gt[dets] = start[slot[dets]] + first_best
    return best_iou, best_gt


def class_average_precision(
    gt_img: np.ndarray,
    gt_boxes: np.ndarray,
    gt_difficult: np.ndarray,
    det_img: np.ndarray,
    det_scores: np.ndarray,
    det_boxes: np.ndarray,
    iou_thresh: float = 0.5,
    iou_strict: bool = True,
    use_07_metric: bool = False,
) -> float:
    """AP of one class; boxes in devkit convention, images as integer keys.  NaN without GT."""
    npos = int(np.count_nonzero(~gt_difficult))
    if npos == 0:
        return float("nan")
    g_order = np.argsort(gt_img, kind="stable")
    gt_img, gt_boxes, gt_difficult = gt_img[g_order], gt_boxes[g_order], gt_difficult[g_order]
    order = np.argsort(-det_scores, kind="stable")
    best_iou, best_gt = _best_gt(det_img[order], det_boxes[order], gt_img, gt_boxes)
    hit = best_iou > iou_thresh if iou_strict else best_iou >= iou_thresh
    ignored = hit & gt_difficult[np.maximum(best_gt, 0)]
    claims = np.flatnonzero(hit & ~ignored)
    tp = np.zeros(len(order), bool)
    tp[claims[np.unique(best_gt[claims], return_index=True)[1]]] = True  # first claim wins
    fp = ~tp & ~ignored
    tp_sum, fp_sum = np.cumsum(tp).astype(np.float64), np.cumsum(fp).astype(np.float64)
    recall = tp_sum / npos
    precision = tp_sum / np.maximum(tp_sum + fp_sum, np.finfo(np.float64).eps)
    return average_precision(recall, precision, use_07_metric)


def summarize_voc(aps: Dict[str, float], title: str) -> Dict[str, Any]:
    """``{"mAP", "per_class"}`` (NaN AP -> -1, left out of the mean) and a logged table."""
    missing = [name for name, ap in aps.items() if np.isnan(ap)]
    if missing:
        logger.warning(
            "no (non-difficult) ground truth for classes %s: AP reported as -1 and left "
            "out of the mAP",
            missing,
        )
    valid = [ap for ap in aps.values() if not np.isnan(ap)]
    result = {
        "mAP": float(np.mean(valid)) if valid else -1.0,
        "per_class": {name: (-1.0 if np.isnan(ap) else float(ap)) for name, ap in aps.items()},
    }
    logger.info(
        "%s\n%s\nper-class AP:\n%s",
        title,
        format_table(["mAP"], [[result["mAP"]]]),
        per_class_table(result["per_class"], "AP"),
    )
    return result


@EVALUATORS.register()
class VOCEvaluator:
    """VOC AP for model outputs against dataset records (detkit 0-based XYXY boxes; see module doc).

    ``records``: the dataset's records (``image_id``, ``boxes``, ``labels``, ``difficult``).
    ``evaluate()`` scores the processed images only (warning when a subset) and returns
    ``{"mAP", "per_class"}``; under torch.distributed rank 0 returns them, other ranks ``{}``.
    """

    def __init__(
        self,
        records: Sequence[Dict],
        class_names: Sequence[str],
        use_07_metric: bool = False,
        iou_thresh: float = 0.5,
        iou_strict: bool = True,
        output_dir: Optional[str] = None,
    ):
        self.class_names = list(class_names)
        self.use_07_metric, self.iou_thresh, self.iou_strict = use_07_metric, iou_thresh, iou_strict
        self.output_dir = output_dir
        self._gt = self._records_to_arrays(records)
        self.reset()

    def _records_to_arrays(self, records: Sequence[Dict]) -> Dict[str, np.ndarray]:
        parts = {"img": [], "boxes": [], "labels": [], "difficult": []}
        for rec in records:
            boxes = detkit_to_devkit_boxes(rec["boxes"])
            labels = np.asarray(rec["labels"], np.int64).reshape(-1)
            difficult = np.asarray(rec.get("difficult", np.zeros(len(labels), bool)), bool).reshape(
                -1
            )
            if not len(boxes) == len(labels) == len(difficult):
                raise ValueError(
                    f"record of image {rec['image_id']}: boxes, labels and difficult "
                    "have different lengths"
                )
            parts["img"].append(np.full(len(labels), int(rec["image_id"]), np.int64))
            parts["boxes"].append(boxes)
            parts["labels"].append(labels)
            parts["difficult"].append(difficult)
        self._record_ids = [int(rec["image_id"]) for rec in records]
        if len(set(self._record_ids)) != len(self._record_ids):
            raise ValueError("VOCEvaluator: records contain the same image_id more than once")
        if not records:
            return {
                "img": np.zeros(0, np.int64),
                "boxes": np.zeros((0, 4)),
                "labels": np.zeros(0, np.int64),
                "difficult": np.zeros(0, bool),
            }
        return {k: np.concatenate(v) for k, v in parts.items()}

    def reset(self) -> None:
        self._image_ids: List[int] = []
        self._dets: List[Tuple[np.ndarray, ...]] = []

    def process(self, samples: Sequence[Dict], outputs: Sequence[Dict]) -> None:
        if len(samples) != len(outputs):
            raise ValueError(f"process() got {len(samples)} samples but {len(outputs)} outputs")
        for sample, output in zip(samples, outputs):
            image_id = int(sample["image_id"])
            boxes = to_numpy(output["boxes"]).astype(np.float64).reshape(-1, 4)
            scores = to_numpy(output["scores"]).astype(np.float64).reshape(-1)
            labels = to_numpy(output["labels"]).astype(np.int64).reshape(-1)
            if not len(boxes) == len(scores) == len(labels):
                raise ValueError(f"image {image_id}: boxes, scores and labels differ in length")
            self._image_ids.append(image_id)
            self._dets.append(
                (
                    np.full(len(scores), image_id, np.int64),
                    detkit_to_devkit_boxes(boxes),
                    scores,
                    labels,
                )
            )

    def evaluate(self) -> Dict[str, Any]:
        gathered = gather_to_main([(self._image_ids, self._dets)])
        if gathered is None:
            return {}
        image_ids = [i for ids, _ in gathered for i in ids]
        parts = [d for _, dets in gathered for d in dets]
        if image_ids:
            keep = check_processed_ids(image_ids, self._record_ids, "the dataset records")
        else:
            logger.warning(
                "VOCEvaluator.evaluate(): no images were processed; scoring empty results "
                "on every record"
            )
            keep = np.asarray(self._record_ids, np.int64)
        det = [
            np.concatenate([p[i] for p in parts]) if parts else np.zeros((0, 4) if i == 1 else 0)
            for i in range(4)
        ]
        if det[3].size and (det[3].min() < 0 or det[3].max() >= len(self.class_names)):
            raise ValueError(f"output labels outside 0..{len(self.class_names) - 1}")
        if det[0].size == 0:
            logger.warning("no detections to evaluate: every AP is 0")
        gt = {k: v[np.isin(self._gt["img"], keep)] for k, v in self._gt.items()}
        aps = {}
        for c, name in enumerate(self.class_names):
            g, d = gt["labels"] == c, det[3] == c
            aps[name] = class_average_precision(
                gt["img"][g],
                gt["boxes"][g],
                gt["difficult"][g],
                det[0][d],
                det[2][d],
                det[1][d],
                self.iou_thresh,
                self.iou_strict,
                self.use_07_metric,
            )
        result = summarize_voc(aps, self._title(len(keep), det[0].size))
        if self.output_dir is not None:
            logger.info("wrote %s", write_json(result, Path(self.output_dir) / "metrics.json"))
        return result

    def _title(self, n_images: int, n_dets: int) -> str:
        metric = "11-point (VOC07)" if self.use_07_metric else "area (VOC10+)"
        op = ">" if self.iou_strict else ">="
        return (
            f"VOC evaluation ({n_images} images, {n_dets} detections, AP {metric}, "
            f"IoU {op} {self.iou_thresh}):"
        )
