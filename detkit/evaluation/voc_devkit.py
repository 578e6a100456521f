"""Evaluate VOC devkit result files (``<prefix><class>.txt``) against a ``VOCdevkit/VOC20xx`` folder.

Result files hold one detection per line, ``image_id score x1 y1 x2 y2``, in the devkit's 1-based
inclusive pixels (what the official evaluation server expects).  Ground truth comes from
``Annotations/<image_id>.xml`` for the ids listed in ``ImageSets/Main/<split>.txt``.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np

from ..utils.voc_files import VOC_CLASSES, read_split, split_file
from .common import short_list
from .voc import class_average_precision, summarize_voc

logger = logging.getLogger("detkit")

PathLike = Union[str, Path]


def read_image_list(voc_root: PathLike, split: str) -> List[str]:
    path = split_file(voc_root, split)
    if not path.is_file():
        raise FileNotFoundError(f"VOC image list not found: {path}")
    return read_split(path)


def parse_voc_xml(path: PathLike) -> List[Dict[str, Any]]:
    """Objects of one VOC annotation file: ``{"name", "difficult": bool, "bbox": [x1, y1, x2, y2]}``
    with the XML's 1-based pixel coordinates as floats.  A missing ``difficult`` tag means 0."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VOC annotation not found: {path}")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"VOC annotation {path} is not valid XML: {e}") from None
    objects = []
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        try:
            name = obj.findtext("name").strip()
            bbox = [float(box.findtext(tag)) for tag in ("xmin", "ymin", "xmax", "ymax")]
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"{path}: an <object> lacks <name> or a numeric <bndbox>") from None
        difficult = int(float((obj.findtext("difficult") or "0").strip() or 0)) == 1
        objects.append({"name": name, "difficult": difficult, "bbox": bbox})
    return objects


def read_result_file(path: PathLike, known_ids: Dict[str, int]) -> Tuple[np.ndarray, ...]:
    """(image index, score, box) arrays from one devkit result file; unknown image ids -> error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VOC result file not found: {path}")
    ids, values = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 6:
            raise ValueError(f"{path}:{n}: expected 'image_id score x1 y1 x2 y2', got {line!r}")
        ids.append(parts[0])
        try:
            values.append([float(v) for v in parts[1:]])
        except ValueError:
            raise ValueError(f"{path}:{n}: non-numeric value in {line!r}") from None
    unknown = sorted(set(ids) - set(known_ids))
    if unknown:
        raise ValueError(f"{path}: image ids not in the evaluated split: {short_list(unknown)}")
    values = np.asarray(values, np.float64).reshape(-1, 5)
    img = np.asarray([known_ids[i] for i in ids], np.int64)
    return img, values[:, 0], values[:, 1:]


def load_voc_ground_truth(
    voc_root: PathLike, split: str
) -> Tuple[Dict[str, int], Dict[str, Tuple]]:
    """Image id -> index, and class name -> (image index, boxes, difficult) arrays."""
    image_ids = read_image_list(voc_root, split)
    index = {image_id: k for k, image_id in enumerate(image_ids)}
    per_class: Dict[str, List[Tuple[int, List[float], bool]]] = {}
    for image_id, k in index.items():
        for obj in parse_voc_xml(Path(voc_root) / "Annotations" / f"{image_id}.xml"):
            per_class.setdefault(obj["name"], []).append((k, obj["bbox"], obj["difficult"]))
    arrays = {
        name: (
            np.asarray([o[0] for o in objs], np.int64),
            np.asarray([o[1] for o in objs], np.float64).reshape(-1, 4),
            np.asarray([o[2] for o in objs], bool),
        )
        for name, objs in per_class.items()
    }
    return index, arrays


def evaluate_voc_files(
    voc_root: PathLike,
    split: str,
    results_dir: PathLike,
    prefix: str = "comp4_det_test_",
    class_names: Sequence[str] = VOC_CLASSES,
    use_07_metric: bool = False,
    iou_thresh: float = 0.5,
    iou_strict: bool = True,
) -> Dict[str, Any]:
    """Devkit-style evaluation of ``<results_dir>/<prefix><class>.txt`` for every class.

    Returns ``{"mAP", "per_class"}``; the rules are :mod:`detkit.evaluation.voc`'s.
    """
    index, gt = load_voc_ground_truth(voc_root, split)
    unknown = sorted(set(gt) - set(class_names))
    if unknown:
        logger.warning("%s: annotations have classes not evaluated: %s", voc_root, unknown)
    empty = (np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0, bool))
    aps, n_dets = {}, 0
    for name in class_names:
        det_img, scores, boxes = read_result_file(Path(results_dir) / f"{prefix}{name}.txt", index)
        n_dets += len(scores)
        g_img, g_boxes, g_difficult = gt.get(name, empty)
        aps[name] = class_average_precision(
            g_img,
            g_boxes,
            g_difficult,
            det_img,
            scores,
            boxes,
            iou_thresh,
            iou_strict,
            use_07_metric,
        )
    metric = "11-point (VOC07)" if use_07_metric else "area (VOC10+)"
    title = (
        f"VOC evaluation of {results_dir} on {voc_root} '{split}' ({len(index)} images, "
        f"{n_dets} detections, AP {metric}, IoU {'>' if iou_strict else '>='} {iou_thresh}):"
    )
    return summarize_voc(aps, title)
