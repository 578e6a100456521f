"""Time detkit's fast COCO engine against pycocotools on random synthetic cases.

    python tools/benchmark_eval.py                       # 5,000 images x 100 dets x 80 classes
    python tools/benchmark_eval.py --images 1000 --dets 10
    python tools/benchmark_eval.py --growth              # images {500,1000,5000} x dets {10,100}

"load" is turning the ground-truth dict and the results list into each engine's input (pycocotools:
COCO index + loadRes; fast: arrays + checks); "eval" is evaluate + accumulate + summarize.  The
speed-up is pycocotools' time over the fast engine's, for eval alone and for load + eval.  The last
column is the largest absolute difference between the two engines' 12 numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

# this checkout's detkit, also without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detkit.evaluation.coco_io import check_detections, load_coco_gt, results_to_detections
from detkit.evaluation.common import format_table
from detkit.evaluation.fast_coco import evaluate_fast
from detkit.utils.cli import tool_main, tool_parser

logger = logging.getLogger("detkit")


def synthetic_case(
    n_images: int, dets_per_image: int, n_classes: int, gt_per_image: float, seed: int
) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """COCO-like ground truth (Poisson count per image, skewed classes, 1% crowd, mask-like areas)
    and exactly ``dets_per_image`` detections per image: half jittered ground truth, half random."""
    rng = np.random.default_rng(seed)
    class_p = 1.0 / np.arange(1, n_classes + 1)  # a few frequent classes, many rare ones
    class_p /= class_p.sum()
    n_gt = rng.poisson(gt_per_image, n_images)
    gt_img = np.repeat(np.arange(1, n_images + 1), n_gt)
    gt_cls = rng.choice(n_classes, gt_img.size, p=class_p)
    gt_box = _boxes(rng, gt_img.size)
    area = gt_box[:, 2] * gt_box[:, 3] * rng.uniform(0.5, 1.0, gt_img.size)
    crowd = rng.random(gt_img.size) < 0.01
    det_img = np.repeat(np.arange(1, n_images + 1), dets_per_image)
    det_cls = rng.choice(n_classes, det_img.size, p=class_p)
    det_box = _boxes(rng, det_img.size)
    starts = np.r_[0, np.cumsum(n_gt)][det_img - 1]
    copy = (rng.random(det_img.size) < 0.5) & (n_gt[det_img - 1] > 0)
    src = starts[copy] + (rng.random(copy.sum()) * n_gt[det_img[copy] - 1]).astype(int)
    det_box[copy] = gt_box[src] + rng.normal(0, 0.1, (src.size, 4)) * np.tile(gt_box[src, 2:], 2)
    det_cls[copy] = np.where(rng.random(src.size) < 0.9, gt_cls[src], det_cls[copy])
    scores = np.round(rng.random(det_img.size), 3)
    gt = {
        "images": [{"id": int(i), "width": 640, "height": 480} for i in range(1, n_images + 1)],
        "categories": [{"id": c + 1, "name": f"class{c + 1}"} for c in range(n_classes)],
        "annotations": [
            {
                "id": k + 1,
                "image_id": int(i),
                "category_id": int(c) + 1,
                "bbox": b,
                "area": float(a),
                "iscrowd": int(z),
            }
            for k, (i, c, b, a, z) in enumerate(zip(gt_img, gt_cls, gt_box.tolist(), area, crowd))
        ],
    }
    dets = [
        {"image_id": int(i), "category_id": int(c) + 1, "bbox": b, "score": s}
        for i, c, b, s in zip(det_img, det_cls, det_box.tolist(), scores.tolist())
    ]
    return gt, dets


def _boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    wh = np.exp(rng.uniform(np.log(8), np.log(400), (n, 2)))
    return np.round(np.concatenate([rng.uniform(0, 500, (n, 2)), wh], axis=1), 2)


def time_fast(gt: Dict, dets: List[Dict]) -> Tuple[float, float, np.ndarray]:
    t0 = time.perf_counter()
    ground = load_coco_gt(gt)
    detections = results_to_detections(dets, "synthetic")
    check_detections(detections, ground, "synthetic")
    t1 = time.perf_counter()
    stats = evaluate_fast(ground, detections).stats
    return t1 - t0, time.perf_counter() - t1, stats


def time_pycocotools(gt: Dict, dets: List[Dict]) -> Tuple[float, float, np.ndarray]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([dict(d) for d in dets])
        t1 = time.perf_counter()
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1, np.asarray(ev.stats)


def run_case(n_images: int, n_dets: int, args: argparse.Namespace) -> List[List[Any]]:
    gt, dets = synthetic_case(n_images, n_dets, args.classes, args.gt_per_image, args.seed)
    f_load, f_eval, f_stats = time_fast(gt, dets)
    p_load, p_eval, p_stats = time_pycocotools(gt, dets)
    diff = float(np.abs(f_stats - p_stats).max())
    logger.info(
        "%d images x %d dets: fast %.2fs, pycocotools %.2fs (eval), max |diff| %.1e",
        n_images,
        n_dets,
        f_eval,
        p_eval,
        diff,
    )
    size = [n_images, n_dets, len(dets)]
    return [
        ["pycocotools", *size, p_load, p_eval, p_load + p_eval, "1.0", "1.0", ""],
        [
            "fast",
            *size,
            f_load,
            f_eval,
            f_load + f_eval,
            f"{p_eval / f_eval:.1f}",
            f"{(p_load + p_eval) / (f_load + f_eval):.1f}",
            f"{diff:.1e}",
        ],
    ]


@tool_main
def main(argv: List[str] = None) -> int:
    parser = tool_parser(__doc__)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument(
        "--gt-per-image", type=float, default=7.0, help="mean ground truth per image"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--growth",
        action="store_true",
        help="also run images {500, 1000, 5000} x dets/image {10, 100}",
    )
    args = parser.parse_args(argv)
    cases = {(args.images, args.dets)}
    if args.growth:
        cases |= {(i, d) for i in (500, 1000, 5000) for d in (10, 100)}
    rows = [row for n_img, n_det in sorted(cases) for row in run_case(n_img, n_det, args)]
    headers = [
        "engine",
        "images",
        "dets/img",
        "dets",
        "load s",
        "eval s",
        "total s",
        "speed-up eval",
        "speed-up total",
        "max |diff|",
    ]
    logger.info(
        "COCO bbox evaluation benchmark (%d classes, seed %d):\n%s",
        args.classes,
        args.seed,
        format_table(headers, rows),
    )
    worst = max(float(r[-1]) for r in rows if r[-1])
    return 0 if worst <= 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main())
