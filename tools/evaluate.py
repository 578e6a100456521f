"""Score saved detections without a model.

COCO (bbox):
    python tools/evaluate.py --gt instances_val2017.json --results dets.json [--out metrics.json]
        [--engine fast|pycocotools]
PASCAL VOC (devkit result files <prefix><class>.txt, lines 'image_id score x1 y1 x2 y2', 1-based):
    python tools/evaluate.py --voc VOCdevkit/VOC2007 --split test --results DIR
        [--prefix comp4_det_test_] [--use-07-metric] [--iou 0.5] [--iou-ge] [--out metrics.json]

Prints the metrics (and per-class AP) and writes them as JSON to --out (default metrics.json):
COCO writes the 12 numbers AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl as
fractions (-1: no ground truth in that area range) plus "per_class"; VOC writes "mAP" and "per_class".
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

# this checkout's detkit, also without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detkit.evaluation import evaluate_coco_results, evaluate_voc_files
from detkit.utils.cli import add_detections_source, reject_voc_only, tool_main, tool_parser
from detkit.utils.io import write_json

logger = logging.getLogger("detkit")


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    add_detections_source(parser, "COCO: results JSON; VOC: folder holding <prefix><class>.txt")
    parser.add_argument("--out", default="metrics.json", help="where to write the metrics JSON")
    parser.add_argument(
        "--engine",
        default="fast",
        choices=["fast", "pycocotools"],
        help="COCO engine (same numbers; fast is the vectorised one)",
    )
    parser.add_argument("--use-07-metric", action="store_true", help="VOC2007 11-point AP")
    parser.add_argument("--iou", type=float, default=0.5, help="VOC IoU threshold")
    parser.add_argument(
        "--iou-ge",
        action="store_true",
        help="VOC: match at IoU >= threshold (default: strictly >, as the devkit)",
    )
    args = parser.parse_args(argv)
    reject_voc_only(parser, args, ("use_07_metric", "iou", "iou_ge"))
    if args.voc and args.engine != "fast":
        parser.error("--engine applies to --gt (COCO) only")
    return args


# exit status 2 for unusable inputs, as before; the evaluation readers (coco_io) report a malformed
# ground truth or results file as a ValueError naming the file
@tool_main(exit_code=2, also=(ValueError,))
def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.gt:
        metrics = evaluate_coco_results(args.gt, args.results, engine=args.engine)
    else:
        if not Path(args.results).is_dir():
            raise FileNotFoundError(f"VOC results folder not found: {args.results}")
        metrics = evaluate_voc_files(
            args.voc,
            args.split,
            args.results,
            prefix=args.prefix,
            use_07_metric=args.use_07_metric,
            iou_thresh=args.iou,
            iou_strict=not args.iou_ge,
        )
    logger.info("wrote %s", write_json(metrics, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
