"""Convert a Pascal VOC split to a COCO-format JSON (e.g. to evaluate VOC with the COCO metrics).

    python datasets/prepare_voc_to_coco.py --voc-root datasets/VOCdevkit/VOC2007 --split test \
        --out datasets/VOCdevkit/VOC2007/annotations/voc07_test.json

Boxes become 0-based ``[x, y, w, h]`` (VOC's 1-based xmin/ymin minus one, as detkit reads VOC);
``file_name`` is relative to ``JPEGImages/``, so the result loads as
``{name: COCODataset, ann_file: <out>, img_dir: <voc-root>/JPEGImages}``. Difficult objects become
``iscrowd: 1`` by default (COCO evaluation then ignores detections on them, as VOC evaluation does).
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

from detkit.data.coco import records_to_coco  # noqa: E402
from detkit.data.voc import VOCDataset  # noqa: E402
from detkit.utils.io import write_json  # noqa: E402


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voc-root", required=True, help="a VOC20xx folder (Annotations/, ImageSets/, JPEGImages/)")
    parser.add_argument("--split", required=True, help="ImageSets/Main/<split>.txt, e.g. trainval or test")
    parser.add_argument("--out", required=True, help="the COCO JSON to write")
    parser.add_argument("--difficult", choices=("crowd", "keep", "drop"), default="crowd",
                        help="difficult objects: iscrowd=1 (default), ordinary boxes, or left out")
    parser.add_argument("--class-names", nargs="+", default=None,
                        help="class names of a custom VOC-format dataset (default: the 20 VOC classes)")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> Path:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    voc_root = Path(args.voc_root).absolute()
    dataset = VOCDataset(str(voc_root), args.split, keep_difficult=args.difficult != "drop",
                         class_names=args.class_names)
    coco = records_to_coco(dataset.records, dataset.class_names, img_dir=voc_root / "JPEGImages",
                           difficult_as_crowd=args.difficult == "crowd")
    write_json(coco, args.out, indent=None)
    logging.getLogger("detkit").info("wrote %s: %d images, %d annotations, %d categories", args.out,
                                     len(coco["images"]), len(coco["annotations"]), len(coco["categories"]))
    return Path(args.out)


if __name__ == "__main__":
    main()
