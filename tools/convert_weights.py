#!/usr/bin/env python
"""Convert torchvision, detectron2 and mmdetection weights into detkit files (local files only;
nothing is downloaded).

    # a torchvision fasterrcnn_resnet50_fpn state dict (any class count) -> detkit checkpoint
    python tools/convert_weights.py --from torchvision \
        --config configs/torchvision/fasterrcnn_resnet50_fpn.yaml SRC.pth DST.pth
    # fasterrcnn_resnet50_fpn_v2 (BatchNorm in backbone, FPN and box head; two-conv RPN head)
    python tools/convert_weights.py --from torchvision \
        --config configs/torchvision/fasterrcnn_resnet50_fpn_v2.yaml SRC.pth DST.pth
    # a torchvision ImageNet ResNet -> detkit backbone-initialised checkpoint
    python tools/convert_weights.py --from torchvision-imagenet --config configs/frcnn_r101_coco.yaml SRC.pth DST.pth
    # a detectron2 model-zoo file (or a detectron2 training output model_*.pth) -> detkit checkpoint
    python tools/convert_weights.py --from detectron2 \
        --config configs/detectron2/faster_rcnn_R_101_C4_3x.yaml model_final_298dad.pkl DST.pth
    # MSRA's Caffe2 ImageNet R-50.pkl / R-101.pkl -> backbone init (model.backbone.weights=DST.pth)
    python tools/convert_weights.py --from detectron2-imagenet \
        --config configs/detectron2/faster_rcnn_R_50_C4_1x.yaml R-50.pkl DST.pth
    # an mmdetection Faster R-CNN .pth (model zoo or training output) -> detkit checkpoint
    python tools/convert_weights.py --from mmdetection \
        --config configs/mmdetection/faster-rcnn_r50_fpn_1x_coco.yaml \
        faster_rcnn_r50_fpn_1x_coco_20200130-047c8118.pth DST.pth

torchvision label i (1..K, 0 = background) becomes detkit label i - 1. Class names can be given with
--class-names (a text file, one per line); COCO's 80 names are used when the checkpoint has 91
outputs (torchvision's COCO layout with its 11 unused ids). detectron2 labels are detkit's; its
80-class files get COCO's names, 20-class files VOC's, others need --class-names. mmdetection's
labels are detkit's too (background last); the names come from the file's meta (dataset_meta.classes,
or CLASSES in 2.x files), else as for detectron2. mmdetection's ImageNet backbones (open-mmlab://
ResNeXts, MSRA ResNets as .pth) need no conversion: model.backbone.weights reads them.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

# this checkout's detkit, also without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detkit.checkpoint import init_from_config, load_state_file
from detkit.checkpoint.torchvision_names import (
    COCO_TORCHVISION_NAMES,
    fit_torchvision_state,
    imagenet_to_detkit,
    torchvision_detector_to_detkit,
    torchvision_num_classes,
    torchvision_variant,
)
from detkit.config import load_config
from detkit.modeling import build_model
from detkit.utils.cli import tool_main, tool_parser
from detkit.utils.io import atomic_save

logger = logging.getLogger("detkit")


def parse_args(argv=None):
    p = tool_parser(__doc__)
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        choices=[
            "torchvision",
            "torchvision-imagenet",
            "detectron2",
            "detectron2-imagenet",
            "mmdetection",
        ],
    )
    p.add_argument(
        "--config", required=True, help="detkit config describing the target architecture"
    )
    p.add_argument("--class-names", help="text file with one class name per line")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    return p.parse_intermixed_args(argv)  # overrides may come after the options


@tool_main
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.source.startswith("detectron2") or args.source == "mmdetection":
        return _convert_foreign(args)
    state = load_state_file(args.src)
    overrides = list(args.overrides)
    if args.source == "torchvision":
        num_classes = torchvision_num_classes(state)
        overrides.append(f"model.num_classes={num_classes}")
        converted = torchvision_detector_to_detkit(state)
    else:
        converted = None
    cfg = load_config(args.config, overrides)
    class_names = _class_names(args.class_names, cfg.model.num_classes)
    model = init_from_config(build_model(cfg, class_names=class_names), cfg)
    if converted is None:
        converted = {**model.state_dict(), **imagenet_to_detkit(state, c4=model.neck is None)}
    else:
        converted = fit_torchvision_state(
            model,
            converted,
            variant=torchvision_variant(state),
            path=args.src,
            config=args.config,
        )
    result = model.load_state_dict(converted, strict=args.source == "torchvision")
    logger.info("converted %d tensors (%s)", len(converted), result)
    atomic_save(
        {
            "model": model.state_dict(),
            "config": cfg.to_dict(),
            "class_names": model.class_names,
            "source": f"{args.source}:{os.path.abspath(args.src)}",
        },
        args.dst,
    )
    logger.info("wrote %s (num_classes=%d)", args.dst, cfg.model.num_classes)
    return 0


def _convert_foreign(args) -> int:
    """detectron2 zoo .pkl / training .pth, or an mmdetection .pth -> detkit checkpoint; MSRA
    R-50/R-101.pkl -> backbone initialisation for model.backbone.weights
    (detkit.checkpoint.convert does the work)."""
    from detkit.checkpoint import convert

    if args.source == "detectron2-imagenet":
        out = convert.caffe2_backbone_file(args.src, args.config, args.overrides)
        atomic_save(out, args.dst)
        logger.info("wrote %s: set model.backbone.weights=%s", args.dst, args.dst)
        return 0
    names = None
    if args.class_names:
        with open(args.class_names) as f:
            names = [line.strip() for line in f if line.strip()]
    convert_file = (
        convert.mmdet_checkpoint if args.source == "mmdetection" else convert.detectron2_checkpoint
    )
    out = convert_file(args.src, args.config, args.overrides, names)
    atomic_save(out, args.dst)
    logger.info("wrote %s (num_classes=%d)", args.dst, len(out["class_names"]))
    return 0


def _class_names(path, num_classes):
    if path:
        with open(path) as f:
            names = [line.strip() for line in f if line.strip()]
        if len(names) != num_classes:
            raise SystemExit(
                f"{path} has {len(names)} names but the checkpoint has {num_classes} classes"
            )
        return names
    if num_classes == 90:
        return COCO_TORCHVISION_NAMES
    return None


if __name__ == "__main__":
    sys.exit(main())
