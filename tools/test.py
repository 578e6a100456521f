#!/usr/bin/env python
"""Evaluate weights on the test split: ``tools/test.py CONFIG --weights W [key=value ...] [--analyze]``.

    python tools/test.py configs/quickstart.yaml --weights output/quickstart/model_final.pth
    python tools/test.py configs/quickstart.yaml --weights output/quickstart/model_final.pth \
        --backend onnxruntime     # the exported graph in onnxruntime (CPU; cached next to the weights)
    python tools/test.py configs/quickstart.yaml --weights output/quickstart/best.pth --analyze

Writes the raw detections (``coco_results.json`` for COCO-style data, ``results.json`` otherwise),
``metrics.json`` and ``log.txt`` NEXT TO THE WEIGHTS, into ``<weights folder>/test_<weights file
stem>/`` (``output/quickstart/test_model_final/`` above; ``..._onnxruntime`` for that backend), so
each weights file keeps its own results; ``--output-dir`` puts them elsewhere. Logs the COCO table
with per-category AP (or VOC mAP). ``--analyze`` then writes the error analysis of these results
(``report.html``, ``analysis.json``, CSVs, figures, galleries of the test images; as
tools/analyze.py) into ``<that folder>/analysis/``.
``--weights`` takes a detkit checkpoint (``model_final.pth``, ``best.pth``, ``last.pth``, one from
tools/convert_weights.py) or a plain state dict. Several GPUs: ``torchrun --nproc-per-node N
tools/test.py ...`` (every image is predicted exactly once; the analysis runs on rank 0).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# this checkout's detkit, also without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detkit.utils.process import prepare_inference_process

prepare_inference_process()  # first, before torch loads OpenMP (see detkit/utils/process.py)

from detkit.utils.cli import tool_main, tool_parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    parser.add_argument("config", help="the YAML config the weights belong to")
    parser.add_argument(
        "overrides", nargs="*", help="config overrides key=value, e.g. test.ims_per_batch=4"
    )
    parser.add_argument("--weights", required=True, help="a detkit checkpoint or a state dict file")
    parser.add_argument(
        "--output-dir",
        default=None,
        help="where results go (default: next to the weights, <weights folder>/test_<weights "
        "file stem>/)",
    )
    parser.add_argument(
        "--backend",
        default="eager",
        help="eager (PyTorch: every test.* option; the default) or onnxruntime (the model exported "
        "to ONNX once, cached next to the weights; CPU, one pass, float32; needs "
        "pip install 'detkit[export]')",
    )
    parser.add_argument(
        "--analyze",
        action="store_true",
        help="after the evaluation, write the error analysis (report.html, analysis.json, CSVs, "
        "figures, galleries) into <output folder>/analysis/",
    )
    parser.add_argument(
        "--analyze-score-thresh",
        type=float,
        default=None,
        help="with --analyze: the confusion matrix's score threshold (default: the score that "
        "maximises F1 over all classes at IoU 0.5)",
    )
    parser.add_argument(
        "--analyze-iou",
        type=float,
        default=None,
        help="with --analyze: the confusion matrix's IoU threshold (default 0.5)",
    )
    args = parser.parse_intermixed_args(argv)  # overrides may come after the options
    if not args.analyze and (args.analyze_score_thresh is not None or args.analyze_iou is not None):
        parser.error("--analyze-score-thresh and --analyze-iou apply with --analyze only")
    return args


@tool_main
def main(argv=None) -> None:
    args = parse_args(argv)
    from detkit.config import load_config
    from detkit.engine import evaluate_main
    from detkit.engine.launch import enable_tf32

    cfg = load_config(args.config, args.overrides)
    enable_tf32()  # TF32 matmuls on GPUs that have them: a process-wide choice the tool makes
    evaluate_main(
        cfg,
        args.weights,
        output_dir=args.output_dir,
        backend=args.backend,
        analyze=args.analyze,
        analyze_score_thresh=args.analyze_score_thresh,
        analyze_iou=0.5 if args.analyze_iou is None else args.analyze_iou,
    )


if __name__ == "__main__":
    sys.exit(main())
