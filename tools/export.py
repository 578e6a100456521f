#!/usr/bin/env python
"""Export a detkit checkpoint to TorchScript or ONNX, preprocessing and postprocessing included.

    python tools/export.py output/model_final.pth --format onnx --output model.onnx [--opset 17]
    python tools/export.py output/model_final.pth --format torchscript --output model.pt
    python tools/export.py r101_c4.pth --format onnx model.roi_heads.refine_iterations=0   # config overrides

The exported model takes ONE image: a uint8 tensor (3, H, W), RGB, any H and W, at its original
size (normalisation, the test resize to input.min_size_test / max_size_test and padding happen
inside). It returns boxes float32 (N, 4) XYXY in the input image's pixels, scores float32 (N,) and
labels int64 (N,) (0-based; class names are stored in the file). ONNX: input name ``image``,
outputs ``boxes``, ``scores``, ``labels``; run it with onnxruntime:

    import onnxruntime as ort
    boxes, scores, labels = ort.InferenceSession("model.onnx").run(None, {"image": chw_uint8})

TorchScript: ``import torchvision`` (for its nms/roi_align operators), then
``torch.jit.load("model.pt")(chw_uint8_tensor)``. A config asking for what the graph does not
compute is refused with the key to set, as the onnxruntime backend refuses it: test-time
augmentation (test.scales, test.flip), test.precision=bf16/fp16, iterative box refinement
(model.roi_heads.refine_iterations) and detectron2's resize conventions; give the override on the
command line (e.g. test.flip=false). With --check, the exported file is run on two image sizes and
compared with the PyTorch model.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

# this checkout's detkit, also without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detkit.utils.cli import tool_main, tool_parser


def parse_args(argv=None) -> argparse.Namespace:
    p = tool_parser(__doc__)
    p.add_argument("checkpoint", help="a detkit checkpoint (.pth with 'model' and 'config')")
    p.add_argument(
        "overrides", nargs="*", help="config overrides key=value, e.g. input.min_size_test=600"
    )
    p.add_argument("--format", required=True, choices=["torchscript", "onnx"])
    p.add_argument("--output", help="output file (default: the checkpoint's name with .pt / .onnx)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 16; default 17)")
    p.add_argument(
        "--check",
        action="store_true",
        help="compare the exported file with PyTorch on two image sizes",
    )
    return p.parse_intermixed_args(argv)  # overrides may come after the options


@tool_main
def main(argv=None) -> int:
    args = parse_args(argv)
    from detkit import Detector
    from detkit.export import export
    from detkit.export.check import check_export

    logger = logging.getLogger("detkit")
    output = args.output or os.path.splitext(args.checkpoint)[0] + (
        ".pt" if args.format == "torchscript" else ".onnx"
    )
    det = Detector.from_checkpoint(args.checkpoint, device="cpu", overrides=args.overrides)
    export(det, output, args.format, opset=args.opset)  # a BackendError is a user error: exit 1
    if args.check:
        fraction = check_export(det, output, args.format)
        if fraction < 0.99:
            logger.error(
                "the exported model matches only %.1f%% of PyTorch's detections", 100 * fraction
            )
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
