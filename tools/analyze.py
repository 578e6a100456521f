"""Why a detector fails: one report of PR curves, COCO and TIDE error breakdowns, confusion matrix,
per-class operating points and galleries, every number from detkit's COCO evaluator.

COCO (results JSON as tools/evaluate.py reads it):
    python tools/analyze.py --gt instances_val2017.json --results dets.json --output-dir analysis \
        [--images val2017/] [--compare other_dets.json] [--score-thresh 0.5] [--iou-thresh 0.5]
PASCAL VOC (devkit result files <prefix><class>.txt; 'difficult' objects are ignored regions):
    python tools/analyze.py --voc VOCdevkit/VOC2007 --split test --results DIR --output-dir analysis

Writes into --output-dir: report.html (one page, open it in a browser), analysis.json (every plotted
array and number), CSV tables, figures/*.png, gallery/ and thresholds.json (per-class best-F1 scores
for `Detector.predict(..., score_thresh=FILE)` and `tools/video.py --score-thresh FILE`).
--images: the folder the ground truth's file_name entries are relative to (galleries need it).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

# this checkout's detkit, also without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detkit.utils.cli import add_detections_source, reject_voc_only, tool_main, tool_parser

logger = logging.getLogger("detkit")


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    add_detections_source(
        parser, "COCO: results JSON; VOC: folder of <prefix><class>.txt (the devkit's format)"
    )
    parser.add_argument("--output-dir", required=True, help="where the report goes")
    parser.add_argument(
        "--images",
        default=None,
        help="COCO: folder the ground truth's file_name paths are relative to (for the galleries)",
    )
    parser.add_argument(
        "--compare",
        default=None,
        help="a second results file (VOC: folder) on the same ground truth: per-class AP and "
        "error-type deltas and the images where one model wins",
    )
    parser.add_argument(
        "--score-thresh",
        type=float,
        default=None,
        help="confusion matrix score threshold (default: the score that maximises F1 over all "
        "classes at IoU 0.5)",
    )
    parser.add_argument(
        "--iou-thresh", type=float, default=0.5, help="confusion matrix IoU threshold"
    )
    parser.add_argument("--no-gallery", action="store_true", help="skip the image galleries")
    args = parser.parse_args(argv)
    reject_voc_only(parser, args)
    if args.voc and args.images:
        parser.error("--images applies to --gt only (VOC images are in <voc>/JPEGImages)")
    return args


def _coco_image_paths(gt_dataset: dict, images: Optional[str]) -> Optional[dict]:
    if images is None:
        return None
    root = Path(images)
    return {int(im["id"]): str(root / im["file_name"]) for im in gt_dataset["images"]}


# exit status 2 for unusable inputs, as tools/evaluate.py: the readers report a malformed ground
# truth or results file as a ValueError naming the file
@tool_main(exit_code=2, also=(ValueError,))
def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from detkit.analysis.run import analyze_coco
    from detkit.evaluation.coco_io import load_coco_gt

    if args.gt:
        gt = load_coco_gt(args.gt)
        results, compare, rules = args.results, args.compare, "coco"
        image_paths = _coco_image_paths(gt.dataset, args.images)
    else:
        from detkit.analysis.voc_input import load_voc_for_analysis

        gt, results = load_voc_for_analysis(args.voc, args.split, args.results, args.prefix)
        compare = None
        if args.compare:
            compare = load_voc_for_analysis(args.voc, args.split, args.compare, args.prefix)[1]
        image_paths = {int(im["id"]): im["file_name"] for im in gt.dataset["images"]}
        rules = "voc"
    analyze_coco(
        gt,
        results,
        args.output_dir,
        image_paths=image_paths,
        score_thresh=args.score_thresh,
        iou_thresh=args.iou_thresh,
        compare=compare,
        galleries=not args.no_gallery,
        rules=rules,
        results_name=str(args.results),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
