"""Time the error analysis (tools/analyze.py without galleries) next to detkit's plain COCO
evaluation, the pycocotools runs that mmdetection's coco_error_analysis.py makes, and tidecv.

    python tools/benchmark_analysis.py                         # 5,000 images x 100 dets x 80 classes
    python tools/benchmark_analysis.py --images 500 --mmdet-classes 80

Rows: detkit's plain evaluation (load + evaluate, what tools/evaluate.py runs); each stage of
detkit's analysis and its total (computation), then writing the figures, CSVs and HTML; the
mmdetection approach (pycocotools at IoU .75/.5/.1, then per class two more pycocotools runs on a
deep copy of the ground truth with the other classes relabelled -- its Sim and Oth) timed on the
first --mmdet-classes classes, with the time per class; tidecv 1.0.1 when it is installed. The last
column is each time over detkit's plain evaluation time.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

# this checkout's detkit (and tools/benchmark_eval.py's synthetic data), without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_eval import synthetic_case

from detkit.evaluation.common import format_table
from detkit.utils.cli import tool_main, tool_parser

logger = logging.getLogger("detkit")


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def time_detkit(gt: Dict, dets: List[Dict]) -> List[List[Any]]:
    from detkit.analysis import coco_errors
    from detkit.analysis.confusion import confusion_matrix
    from detkit.analysis.report import write_report
    from detkit.analysis.run import analyze, load_inputs
    from detkit.analysis.tide import tide_errors
    from detkit.evaluation.fast_coco import evaluate_fast

    (ground, detections, _, _), t_load = _timed(load_inputs, copy.deepcopy(gt), dets)
    _, t_plain = _timed(evaluate_fast, ground, detections)
    main, t_main = _timed(coco_errors.evaluate_main, ground, detections)
    (curves, _), t_breakdown = _timed(coco_errors.breakdown_curves, ground, detections, main)
    (ops, overall), t_ops = _timed(coco_errors.operating_points, ground, main)
    _, t_tide = _timed(tide_errors, ground, detections, records=False)
    _, t_conf = _timed(confusion_matrix, ground, detections, overall["score"] if overall else 0.0)
    (analysis, _, _), t_all = _timed(analyze, copy.deepcopy(gt), dets, error_records=False)
    with tempfile.TemporaryDirectory() as tmp:
        _, t_write = _timed(write_report, analysis, tmp)
    plain = t_load + t_plain
    total = t_all
    return [
        ["detkit plain evaluation (load + evaluate)", plain, 1.0],
        ["  analysis: COCO evaluation (+ IoU 0.1 for Loc)", t_main, t_main / plain],
        ["  analysis: Sim, Oth (IoU 0.1 x 2)", t_breakdown, t_breakdown / plain],
        ["  analysis: operating points", t_ops, t_ops / plain],
        ["  analysis: TIDE", t_tide, t_tide / plain],
        ["  analysis: confusion matrix", t_conf, t_conf / plain],
        ["detkit analysis, all numbers (load + analyze)", total, total / plain],
        ["detkit report files (figures, CSV, HTML)", t_write, t_write / plain],
        ["detkit analysis + report (no galleries)", total + t_write, (total + t_write) / plain],
    ], plain


def _pycocotools_eval(gt_dataset: Dict, dets: List[Dict], iou_thrs, max_dets):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt_dataset
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets) if dets else None
        if coco_dt is None:
            return None
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.iouThrs = np.array(iou_thrs)
        ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
    return ev


def time_mmdet_approach(gt: Dict, dets: List[Dict], n_classes: int, plain: float) -> List[List]:
    """mmdetection's coco_error_analysis.py recipe, reimplemented with pycocotools calls only."""
    t0 = time.perf_counter()
    _pycocotools_eval(copy.deepcopy(gt), [dict(d) for d in dets], [0.75, 0.5, 0.1], [100])
    t_first = time.perf_counter() - t0
    cats = [c["id"] for c in gt["categories"]][:n_classes]
    t0 = time.perf_counter()
    for cat in cats:
        own = [dict(d) for d in dets if d["category_id"] == cat]
        for _same_super in (True, False):  # Sim, Oth: the same work when all share a supercategory
            data = copy.deepcopy(gt)
            for ann in data["annotations"]:
                if ann["category_id"] != cat:
                    ann["category_id"] = cat
                    ann["iscrowd"] = 1  # how that script marks the relabelled boxes
            _pycocotools_eval(data, own, [0.1], [100])
    t_classes = time.perf_counter() - t0
    per_class = t_classes / max(len(cats), 1)
    total_k = len(gt["categories"])
    return [
        ["mmdet approach: pycocotools at IoU .75/.5/.1", t_first, t_first / plain],
        [f"mmdet approach: Sim+Oth, {len(cats)} classes measured", t_classes, t_classes / plain],
        ["mmdet approach: Sim+Oth per class", per_class, per_class / plain],
        [
            f"mmdet approach: total for {total_k} classes (first row + {total_k} x per class)",
            t_first + total_k * per_class,
            (t_first + total_k * per_class) / plain,
        ],
    ]


def time_tidecv(gt: Dict, dets: List[Dict], plain: float) -> List[List]:
    try:
        from tidecv import TIDE
        from tidecv import data as tide_data
    except ImportError:
        logger.info("tidecv is not installed: its row is left out (pip install tidecv==1.0.1)")
        return []
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        ground = tide_data.Data("gt")
        for ann in gt["annotations"]:
            if ann.get("iscrowd"):
                ground.add_ignore_region(ann["image_id"], ann["category_id"], ann["bbox"])
            else:
                ground.add_ground_truth(ann["image_id"], ann["category_id"], ann["bbox"])
        preds = tide_data.Data("dets")
        for d in dets:
            preds.add_detection(d["image_id"], d["category_id"], d["score"], d["bbox"])
        tide = TIDE()
        tide.evaluate(ground, preds, mode=TIDE.BOX)
        tide.get_main_errors()
    t = time.perf_counter() - t0
    return [["tidecv 1.0.1 (load + evaluate + errors)", t, t / plain]]


@tool_main
def main(argv: List[str] = None) -> int:
    parser = tool_parser(__doc__)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--gt-per-image", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--mmdet-classes",
        type=int,
        default=2,
        help="classes to run mmdetection's per-class pycocotools recipe on (0: skip it)",
    )
    parser.add_argument("--no-tidecv", action="store_true", help="leave tidecv out")
    args = parser.parse_args(argv)
    gt, dets = synthetic_case(args.images, args.dets, args.classes, args.gt_per_image, args.seed)
    for n, c in enumerate(gt["categories"]):
        c["supercategory"] = f"group{n % 12}"  # COCO has 12 supercategories
    rows, plain = time_detkit(gt, dets)
    if args.mmdet_classes:
        rows += time_mmdet_approach(gt, dets, args.mmdet_classes, plain)
    if not args.no_tidecv:
        rows += time_tidecv(gt, dets, plain)
    logger.info(
        "error analysis benchmark: %d images x %d dets, %d classes, seed %d\n%s",
        args.images,
        args.dets,
        args.classes,
        args.seed,
        format_table(["what", "seconds", "x plain evaluation"], rows),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
