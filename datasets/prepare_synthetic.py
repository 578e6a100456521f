"""Generate detkit's synthetic detection dataset (COCO JSON + JPEGs, optionally VOC XML).

    python datasets/prepare_synthetic.py --out datasets/synthetic --split train --num-images 1000
    python datasets/prepare_synthetic.py --out datasets/synthetic --split val --num-images 200

writes ``<out>/<split>/{annotations.json, JPEGImages/}``: the same files ``SyntheticDataset`` generates
on first use (so this script is only needed to prepare data ahead of time, e.g. on a login node).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

try:
    import detkit  # noqa: F401
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detkit.data.synthetic import generate_synthetic  # noqa: E402


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="dataset folder (the `root` of a SyntheticDataset entry)")
    parser.add_argument("--split", default="train", help="split name; also part of the random seed")
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--num-classes", type=int, default=6, help="1..10")
    parser.add_argument("--min-size", type=int, default=256, help="smallest image side length")
    parser.add_argument("--max-size", type=int, default=384, help="largest image side length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--voc", action="store_true", help="also write VOC XML + ImageSets/Main/<split>.txt")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> Path:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    ann_file = generate_synthetic(Path(args.out) / args.split, num_images=args.num_images,
                                  num_classes=args.num_classes, image_size=(args.min_size, args.max_size),
                                  seed=args.seed, split=args.split, write_voc=args.voc)
    logging.getLogger("detkit").info("synthetic %s split ready: %s", args.split, ann_file)
    return ann_file


if __name__ == "__main__":
    main()
