"""Random COCO ground truth + detections for engine cross-checks and the benchmark."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np


def make_case(
    rng: np.random.Generator,
    n_images: int = 20,
    n_cats: int = 5,
    gt_per_image: int = 6,
    dets_per_image: int = 30,
    crowd_frac: float = 0.1,
    empty_frac: float = 0.1,
    score_decimals: int = 2,
) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """A random case exercising every COCO rule.

    Boxes span all three area ranges; ``area`` differs from the box area (as with masks); some
    images have no ground truth, some ground truth is crowd, detections are jittered copies of
    ground truth (so IoUs cross every threshold, including exact ties) plus random boxes; scores
    are rounded to ``score_decimals`` so ties are common; the last category has no ground truth.
    """
    images = [
        {"id": int(i), "width": 640, "height": 480}
        for i in rng.choice(10 * n_images, n_images, replace=False) + 1
    ]
    cats = [
        {"id": int(c), "name": f"c{c}"} for c in sorted(rng.choice(90, n_cats, replace=False) + 1)
    ]
    anns, dets = [], []
    for im in images:
        n_gt = 0 if rng.random() < empty_frac else int(rng.integers(1, 2 * gt_per_image))
        boxes = _random_boxes(rng, n_gt)
        labels = rng.integers(0, max(n_cats - 1, 1), n_gt)
        for box, lab in zip(boxes, labels):
            area = float(box[2] * box[3] * rng.choice([1.0, rng.uniform(0.4, 1.0)]))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": im["id"],
                    "category_id": cats[lab]["id"],
                    "bbox": [float(v) for v in box],
                    "area": area,
                    "iscrowd": int(rng.random() < crowd_frac),
                }
            )
        n_det = int(rng.integers(0, 2 * dets_per_image + 1))
        for _ in range(n_det):
            if n_gt and rng.random() < 0.6:
                j = int(rng.integers(n_gt))
                box, lab = (
                    _jitter(rng, boxes[j]),
                    labels[j] if rng.random() < 0.9 else rng.integers(n_cats),
                )
            else:
                box, lab = _random_boxes(rng, 1)[0], rng.integers(n_cats)
            dets.append(
                {
                    "image_id": im["id"],
                    "category_id": cats[int(lab)]["id"],
                    "bbox": [float(v) for v in box],
                    "score": float(np.round(rng.random(), score_decimals)),
                }
            )
    rng.shuffle(anns)  # file order must not matter beyond pycocotools' own tie rules
    return {"images": images, "annotations": anns, "categories": cats}, dets


def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    side = np.exp(rng.uniform(np.log(4), np.log(300), (n, 2)))
    xy = rng.uniform(0, 400, (n, 2))
    boxes = np.concatenate([xy, side], axis=1)
    return np.round(boxes, 1) if rng.random() < 0.5 else boxes


def _jitter(rng: np.random.Generator, box: np.ndarray) -> np.ndarray:
    mode = rng.random()
    if mode < 0.15:
        return box.copy()  # exact duplicate: IoU 1, and ties between duplicates
    if mode < 0.3:  # integer shifts make exact IoU values like 0.5 likely
        out = np.round(box)
        out[rng.integers(4)] += rng.integers(-3, 4)
        return np.maximum(out, 1)
    scale = rng.uniform(0.02, 0.4)
    return box + rng.normal(0, scale, 4) * np.r_[box[2:], box[2:]]


COCO_STATS = (
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


def stats_of(metrics: dict) -> List[float]:
    """The 12 numbers of a metrics dict, in pycocotools' stats order."""
    return [metrics[k] for k in COCO_STATS]
