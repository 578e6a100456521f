#!/usr/bin/env python
"""Evaluate weights on the test split: ``tools/test.py CONFIG --weights W [key=value ...] [--output-dir D]``.

    python tools/test.py configs/quickstart.yaml --weights output/quickstart/model_final.pth
    python tools/test.py configs/quickstart.yaml --weights output/quickstart/model_final.pth \
        --backend onnxruntime     # the exported graph in onnxruntime (CPU; cached next to the weights)

Writes the raw detections (``coco_results.json`` for COCO-style data, ``results.json`` otherwise) and
``metrics.json`` to the output folder and logs the COCO table with per-category AP (or VOC mAP).
``--weights`` takes a detkit checkpoint (``model_final.pth``, ``best.pth``, ``last.pth``, one from
tools/convert_weights.py) or a plain state dict. Several GPUs: ``torchrun --nproc-per-node N
tools/test.py ...`` (every image is predicted exactly once).
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
        "--output-dir", default=None, help="where results go (default: <output_dir>/test)"
    )
    parser.add_argument(
        "--backend",
        default="eager",
        help="eager (PyTorch: every test.* option; the default) or onnxruntime (the model exported "
        "to ONNX once, cached next to the weights; CPU, one pass, float32; needs "
        "pip install 'detkit[export]')",
    )
    return parser.parse_intermixed_args(argv)  # overrides may come after the options


@tool_main
def main(argv=None) -> None:
    args = parse_args(argv)
    from detkit.config import load_config
    from detkit.engine import evaluate_main
    from detkit.engine.launch import enable_tf32

    cfg = load_config(args.config, args.overrides)
    enable_tf32()  # TF32 matmuls on GPUs that have them: a process-wide choice the tool makes
    evaluate_main(cfg, args.weights, output_dir=args.output_dir, backend=args.backend)


if __name__ == "__main__":
    sys.exit(main())
