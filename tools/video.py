#!/usr/bin/env python
"""Detect objects in a video, a camera stream or images; write an annotated video and JSON lines.

    python tools/video.py model_final.pth --input clip.mp4                       # a detkit checkpoint
    python tools/video.py configs/frcnn_r50_fpn_coco.yaml --weights W.pth --input clip.mp4 --output out.mp4
    python tools/video.py ckpt.pth --input 0                                   # camera 0 (Ctrl-C stops)
    python tools/video.py ckpt.pth --input "frames/*.jpg" --output annotated/  # a glob, a folder or one image
    python tools/video.py ckpt.pth --input street.jpg --output street_det.jpg  # one image -> one file (+ .jsonl)
    python tools/video.py ckpt.pth --input clip.mp4 test.flip=true test.scales=[600,800]   # test-time switches
    python tools/video.py ckpt.pth --input clip.mp4 --backend onnxruntime      # CPU: the exported graph
    python tools/video.py ckpt.pth --input clip.mp4 --score-thresh thresholds.json   # per-class thresholds

Outputs: for a video or camera, the annotated video (mp4v, the source's frame rate and size; with
--every N, fps / N) and ``<output>.jsonl`` beside it; for images, annotated images in the output
folder plus ``detections.jsonl``. One JSON record per processed frame: ``frame``, ``timestamp`` (s),
``width``, ``height``, ``boxes`` (XYXY pixels), ``scores``, ``labels``, ``names`` (and ``file`` for
images); see detkit/io_video/writers.py. At the end it logs frames/s for the whole pipeline
(decode + model + draw + write) and for the model alone, with the backend. Exit status 130 after Ctrl-C (the outputs
are complete up to the last frame written).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# this checkout's detkit, also without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detkit.utils.process import prepare_inference_process

prepare_inference_process()  # first, before torch loads OpenMP (see detkit/utils/process.py)

from detkit.utils.cli import tool_main, tool_parser


def score_thresh_arg(text: str):
    """--score-thresh: a number, or else the path of a thresholds file (read once the model's
    class names are known, by detkit.io_video.detect_source)."""
    try:
        return float(text)
    except ValueError:
        return text


def parse_args(argv=None) -> argparse.Namespace:
    p = tool_parser(__doc__)
    p.add_argument("model", help="a detkit checkpoint (.pth) or a YAML config (then --weights)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. test.flip=true")
    p.add_argument("--weights", help="weights for a config (a detkit checkpoint or state dict)")
    p.add_argument(
        "--input",
        required=True,
        help="video file, image file, folder, glob of images, or camera index",
    )
    p.add_argument(
        "--output",
        help="annotated video (.mp4) or, for images, a folder (default: output/video/<name>)",
    )
    p.add_argument(
        "--score-thresh",
        type=score_thresh_arg,
        default=0.5,
        help="keep detections scoring at least this (0.5), or per class: a thresholds file "
        "(JSON, e.g. the error analysis' best-F1 operating points; classes it leaves out use its "
        "default, else 0.5)",
    )
    p.add_argument("--classes", help="comma-separated class names to keep, e.g. person,car")
    p.add_argument("--every", type=int, default=1, help="process every N-th frame (1)")
    p.add_argument("--max-frames", type=int, help="stop after this many processed frames")
    p.add_argument(
        "--batch-size",
        type=int,
        help="frames per model call (default: test.ims_per_batch, whose auto is as many as "
        "test.parallel_images runs side by side on the CPU, 1 on a GPU; 1 gives the lowest "
        "latency for a camera)",
    )
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)"
    )
    p.add_argument(
        "--backend",
        default="eager",
        help="eager (PyTorch: every test.* option; the default) or onnxruntime (the model exported "
        "to ONNX once, cached next to the checkpoint; CPU, one pass, float32; needs "
        "pip install 'detkit[export]')",
    )
    p.add_argument("--no-video", action="store_true", help="write the JSON lines only")
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads of either backend (default: torch's choice, the physical cores for "
        "onnxruntime; 1 is often fastest on a small, busy CPU)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--stats-json", help="also write the counts and frames/s figures to this JSON file"
    )
    return p.parse_intermixed_args(argv)  # overrides may come after the options


def build_detector(args):
    from detkit import Detector
    from detkit.utils.device import resolve_device

    # before the checkpoint is read: a missing GPU is reported as the --device problem it is
    device = resolve_device(args.device, option="--device")
    if args.model.endswith((".yaml", ".yml")):
        return Detector.from_config(
            args.model,
            weights=args.weights,
            device=device,
            overrides=args.overrides,
            backend=args.backend,
        )
    if args.weights:
        raise SystemExit("--weights is for a config; a checkpoint already holds its weights")
    return Detector.from_checkpoint(
        args.model, device=device, overrides=args.overrides, backend=args.backend
    )


@tool_main
def main(argv=None) -> int:
    args = parse_args(argv)
    from detkit.io_video import detect_source
    from detkit.utils.io import write_json

    logger = logging.getLogger("detkit")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    det = build_detector(args)
    if args.batch_size is None:
        from detkit.inference.parallel import resolve_test_batch

        args.batch_size = resolve_test_batch(det.cfg, det.device)
        logger.info("--batch-size %d (test.ims_per_batch)", args.batch_size)
    result = detect_source(  # DataError, WriteError, ConfigError: user errors, exit 1
        det,
        args.input,
        output=args.output,
        score_thresh=args.score_thresh,
        classes=[c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None,
        every=args.every,
        max_frames=args.max_frames,
        batch_size=args.batch_size,
        no_video=args.no_video,
        progress=not args.no_progress,
    )
    s = result.stats
    logger.info("wrote %s%s", "" if result.video is None else f"{result.video} and ", result.jsonl)
    if args.stats_json:
        write_json(
            {
                "frames": s.frames,
                "skipped": s.skipped,
                "interrupted": s.interrupted,
                "wall_s": s.wall_s,
                "model_s": s.model_s,
                "pipeline_fps": s.pipeline_fps,
                "model_fps": s.model_fps,
                "device": str(det.device),
                "backend": s.backend,
                "batch_size": args.batch_size,
                "input": str(args.input),
            },
            args.stats_json,
        )
    return 130 if s.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
