"""PASCAL VOC ground truth and devkit result files as the COCO structures the analysis works on.

``load_voc_for_analysis(voc_root, split, results_dir)`` reads a ``VOCdevkit/VOC20xx`` folder
(``Annotations/<id>.xml`` for the ids in ``ImageSets/Main/<split>.txt``) and the devkit's result
files ``<results_dir>/<prefix><class>.txt`` (``image_id score x1 y1 x2 y2`` per line, 1-based
inclusive pixels) with the devkit evaluation's own readers (``detkit.evaluation.voc_devkit``: the
same objects, difficult flags and detections that ``evaluate_voc_files`` scores), and returns a
:class:`~detkit.evaluation.coco_io.GroundTruth` and :class:`~detkit.evaluation.coco_io.Detections`.

Conventions of the converted data:

* Boxes are XYWH with ``x = x1 - 1``, ``y = y1 - 1``, ``w = x2 - x1 + 1``, ``h = y2 - y1 + 1``: VOC's
  inclusive widths (so areas and, through pycocotools' ``x + w`` right edges, every IoU equal the
  devkit's ``voc_iou``), placed in detkit's 0-based pixel coordinates (``detkit.data.voc``: a
  box ``[x, y, x + w, y + h]`` is the one drawn on the image). Ground truth and detections are
  shifted alike, so nothing the evaluation computes depends on the shift.
* ``difficult`` objects are kept and marked ``GroundTruth.ann_ignore`` (neither found nor missed,
  as the devkit treats them); nothing is crowd. ``area`` is ``w * h``.
* Image ids are ``detkit.data.voc.voc_image_ids`` of the split's names (``000005`` -> 5,
  ``2008_000002`` -> 2008000002, else the 1-based line number): the ids detkit's ``VOCDataset``
  gives the same images. ``dataset["images"]`` lists them in split order as
  ``{"id", "file_name": <voc_root>/JPEGImages/<voc id>.jpg (absolute), "height", "width",
  "voc_id"}``.
* Categories are ``class_names`` (the 20 VOC classes by default) with ids 1..K in that order, no
  supercategory; objects of other classes are left out with a warning, as ``evaluate_voc_files``
  does.
"""

from __future__ import annotations

import dataclasses
import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ..data.voc import voc_image_ids
from ..errors import DataError
from ..evaluation.coco_io import Detections, GroundTruth, load_coco_gt
from ..evaluation.common import short_list
from ..evaluation.voc_devkit import parse_voc_xml, read_result_file
from ..utils.voc_files import VOC_CLASSES, read_split, split_file

logger = logging.getLogger("detkit")

PathLike = Union[str, Path]
_LAYOUT = "a VOCdevkit/VOC20xx folder with Annotations/*.xml and ImageSets/Main/<split>.txt"
_RESULT_LINE = "one 'image_id score x1 y1 x2 y2' line per detection, 1-based inclusive pixels"


def load_voc_for_analysis(
    voc_root: PathLike,
    split: str,
    results_dir: PathLike,
    prefix: str = "comp4_det_test_",
    class_names: Sequence[str] = VOC_CLASSES,
) -> Tuple[GroundTruth, Detections]:
    """The ground truth of ``split`` and the detections of ``<results_dir>/<prefix><class>.txt``
    for every class of ``class_names`` (module docstring for the conventions). A missing folder,
    split, annotation or result file, or a malformed one, is a :class:`DataError` naming it and
    what is expected."""
    root = Path(voc_root).absolute()
    names = _split_names(root, split)
    ids = voc_image_ids(names)
    index = dict(zip(names, ids))
    class_names = [str(n) for n in class_names]
    cat_of = {name: k + 1 for k, name in enumerate(class_names)}

    images, annotations, difficult, others = [], [], [], {}
    for name, image_id in zip(names, ids):
        xml_path = root / "Annotations" / f"{name}.xml"
        objects = _read_objects(xml_path, split)
        jpeg = root / "JPEGImages" / f"{name}.jpg"
        height, width = _image_size(xml_path, jpeg)
        images.append(
            {
                "id": image_id,
                "file_name": str(jpeg),
                "height": height,
                "width": width,
                "voc_id": name,
            }
        )
        for obj in objects:
            if obj["name"] not in cat_of:
                others[obj["name"]] = others.get(obj["name"], 0) + 1
                continue
            bbox = devkit_to_xywh(obj["bbox"])[0].tolist()
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat_of[obj["name"]],
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                    "difficult": int(obj["difficult"]),
                }
            )
            difficult.append(bool(obj["difficult"]))
    if others:
        logger.warning(
            "%s: objects of classes not among the %d analysed are left out: %s",
            root,
            len(class_names),
            ", ".join(f"{n} ({c})" for n, c in sorted(others.items())),
        )
    dataset = {
        "info": {"description": f"PASCAL VOC {root} '{split}'"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cat_of[n], "name": n} for n in class_names],
    }
    gt = dataclasses.replace(
        load_coco_gt(dataset),
        source=f"{root} '{split}'",
        ann_ignore=np.asarray(difficult, bool).reshape(len(annotations)),
    )
    dets = _read_results(Path(results_dir), prefix, class_names, cat_of, index, split)
    logger.info(
        "VOC %s '%s': %d images, %d objects (%d difficult), %d detections from %s",
        root,
        split,
        len(images),
        len(annotations),
        sum(difficult),
        dets.size,
        results_dir,
    )
    return gt, dets


def _split_names(root: Path, split: str) -> List[str]:
    if not root.is_dir():
        raise DataError(f"VOC folder not found: {root} (expected {_LAYOUT})")
    if not (root / "Annotations").is_dir():
        raise DataError(f"{root} has no Annotations folder (expected {_LAYOUT})")
    path = split_file(root, split)
    if not path.is_file():
        folder = path.parent
        known = sorted(p.stem for p in folder.glob("*.txt") if "_" not in p.stem)
        raise DataError(
            f"VOC split file not found: {path} (the image ids of split {split!r}, one per line; "
            + (f"splits in {folder}: {', '.join(known)})" if known else f"expected {_LAYOUT})")
        )
    try:
        listed = read_split(path)
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the VOC split file {path}: {e}") from None
    names = list(dict.fromkeys(listed))
    if len(names) < len(listed):
        logger.warning(
            "%s lists %d image ids more than once; each is analysed once",
            path,
            len(listed) - len(names),
        )
    if not names:
        raise DataError(f"VOC split file {path} lists no images")
    return names


def _read_objects(xml_path: Path, split: str) -> List[Dict[str, Any]]:
    if not xml_path.is_file():
        raise DataError(f"VOC annotation not found: {xml_path} (listed in split {split!r})")
    try:
        return parse_voc_xml(xml_path)
    except (OSError, ValueError) as e:
        raise DataError(str(e)) from None


def _image_size(xml_path: Path, jpeg: Path) -> Tuple[Optional[int], Optional[int]]:
    """(height, width) from the annotation's ``<size>``, else from the image file, else None."""
    size = ET.parse(xml_path).getroot().find("size")  # parse_voc_xml has checked the XML
    values = []
    for tag in ("height", "width"):
        try:
            values.append(int(float(size.findtext(tag))))
        except (AttributeError, TypeError, ValueError):
            values.append(0)
    if all(values):
        return values[0], values[1]
    try:
        with Image.open(jpeg) as im:
            return im.size[1], im.size[0]
    except OSError:
        logger.warning("%s gives no image size and %s cannot be opened", xml_path, jpeg)
        return None, None


def devkit_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """Devkit 1-based inclusive ``x1 y1 x2 y2`` rows -> 0-based XYWH with the inclusive width and
    height (``x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1``), float64 (N, 4)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2] - 1.0, b[:, 2:] - b[:, :2] + 1.0], axis=1)


def _read_results(
    folder: Path,
    prefix: str,
    class_names: Sequence[str],
    cat_of: Dict[str, int],
    index: Dict[str, int],
    split: str,
) -> Detections:
    if not folder.is_dir():
        raise DataError(
            f"VOC results folder not found: {folder} (expected one devkit result file "
            f"{prefix}<class>.txt per class, {_RESULT_LINE})"
        )
    paths = [folder / f"{prefix}{name}.txt" for name in class_names]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        found = sorted(p.name for p in folder.glob("*.txt"))
        raise DataError(
            f"{folder}: no result file for {len(missing)} of {len(paths)} classes: "
            f"{short_list(missing, 5)} (expected {prefix}<class>.txt for every class, "
            f"{_RESULT_LINE}; an empty file for a class without detections; "
            + (f"the .txt files there: {short_list(found, 5)})" if found else "none is there)")
        )
    parts = []
    for name, path in zip(class_names, paths):
        try:
            image_id, score, boxes = read_result_file(path, index)
        except (OSError, ValueError) as e:
            raise DataError(f"{e} (the images of split {split!r}; {_RESULT_LINE})") from None
        bbox = devkit_to_xywh(boxes)
        category = np.full(len(score), cat_of[name], np.int64)
        parts.append(Detections(image_id.astype(np.int64), category, bbox, score))
    return Detections.concat(parts)
