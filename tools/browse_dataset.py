#!/usr/bin/env python
"""Render a dataset's ground truth, after the training transforms, to images (to check both).

    python tools/browse_dataset.py configs/quickstart.yaml --split train --num 20 --output browse/
    python tools/browse_dataset.py configs/frcnn_r101_voc.yaml --split val --no-transforms   # as annotated

Each image is the sample the model would train on (resized, flipped, jittered as input.* says),
with its ground-truth boxes drawn dashed in the class colour and labelled with the class name.
Files are named ``<index>_<image_id>.jpg``. For --split val/test the training transforms are applied
too (what you check is the boxes after the transforms); --no-transforms draws the images as read.
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
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    p.add_argument("--split", default="train", choices=["train", "val", "test"])
    p.add_argument("--output", help="output folder (default: <output_dir>/browse_<split>)")
    p.add_argument("--num", type=int, default=20, help="how many images (default 20; 0 = all)")
    p.add_argument("--start", type=int, default=0, help="first dataset index")
    p.add_argument(
        "--no-transforms",
        action="store_true",
        help="draw the images as read, without the transforms",
    )
    return p.parse_intermixed_args(argv)  # overrides may come after the options


def set_mapper(dataset, mapper) -> None:
    """Give every dataset (also inside a union) the same mapper."""
    for d in getattr(dataset, "datasets", [dataset]):
        d.mapper = mapper


def render(dataset, output: str, indices, logger) -> int:
    import cv2
    import numpy as np
    from tqdm import tqdm

    from detkit.visualization import draw_ground_truth

    os.makedirs(output, exist_ok=True)
    written = 0
    for i in tqdm(indices, desc="render", unit="image"):
        sample = dataset[i]
        if sample is None:  # a broken image skipped by the dataset
            continue
        image = sample["image"].permute(1, 2, 0).numpy().astype(np.uint8)
        drawn = draw_ground_truth(
            image, sample["gt_boxes"], sample["gt_labels"], dataset.class_names
        )
        path = os.path.join(output, f"{i:06d}_{sample['image_id']}.jpg")
        if not cv2.imwrite(path, np.ascontiguousarray(drawn[:, :, ::-1])):
            raise OSError(f"cannot write {path}")
        written += 1
    logger.info("wrote %d images with their ground truth to %s", written, output)
    return written


@tool_main
def main(argv=None) -> int:
    args = parse_args(argv)
    from detkit.config import load_config
    from detkit.data import build_dataset, build_mapper

    logger = logging.getLogger("detkit")
    cfg = load_config(args.config, args.overrides)
    dataset = build_dataset(cfg, args.split)
    set_mapper(dataset, None if args.no_transforms else build_mapper(cfg, is_train=True))
    end = len(dataset) if args.num <= 0 else min(len(dataset), args.start + args.num)
    output = args.output or os.path.join(cfg.output_dir, f"browse_{args.split}")
    render(dataset, output, range(args.start, end), logger)
    return 0


if __name__ == "__main__":
    sys.exit(main())
