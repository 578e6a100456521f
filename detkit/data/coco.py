"""COCO-format datasets: any ``{"images", "annotations", "categories"}`` JSON plus an image folder.

Loading is strict where a silent fix would corrupt training or evaluation (duplicate or zero
annotation ids, which pycocotools mis-scores; unknown category or image ids; missing keys) and
forgiving where the fix is obvious (degenerate boxes dropped, boxes clipped to the image, each with
one warning naming the image and annotation id).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from detkit.data.common import DetectionDataset, PathLike, empty_record_arrays, resolve_path
from detkit.errors import DataError
from detkit.registry import DATASETS
from detkit.utils.coco_json import check_annotation_ids, int_ids, read_json

logger = logging.getLogger("detkit")

_CLIP_TOLERANCE = 0.01  # px; float noise beyond the border is clipped without a warning


def load_json(path: PathLike) -> dict:
    data = read_json(path, "COCO annotation", DataError)
    if not isinstance(data, dict):
        raise DataError(f"{path}: a COCO file is a JSON object, got {type(data).__name__}")
    return data


def _require(entry: dict, keys: Sequence[str], path, what: str) -> None:
    missing = [k for k in keys if k not in entry]
    if missing:
        raise DataError(f"{path}: {what} is missing key(s) {missing}")


def parse_categories(data: dict, path) -> Tuple[List[int], List[str]]:
    """Category ids sorted ascending and their names: detkit label i <-> category id ids[i]."""
    if not isinstance(data.get("categories"), list) or not data["categories"]:
        raise DataError(f"{path}: 'categories' must be a non-empty list")
    names: Dict[int, str] = {}
    int_ids([c.get("id") for c in data["categories"]], path, "category ids", DataError)
    for i, cat in enumerate(data["categories"]):
        _require(cat, ("id", "name"), path, f"category #{i}")
        if cat["id"] in names:
            raise DataError(f"{path}: duplicate category id {cat['id']}")
        names[cat["id"]] = str(cat["name"])
    ids = sorted(names)
    return ids, [names[i] for i in ids]


def parse_images(data: dict, path) -> List[dict]:
    if not isinstance(data.get("images"), list):
        raise DataError(f"{path}: 'images' must be a list")
    int_ids([img.get("id") for img in data["images"]], path, "image ids", DataError)
    seen = set()
    for i, img in enumerate(data["images"]):
        _require(
            img, ("id", "file_name", "height", "width"), path, f"image #{i} (id {img.get('id')})"
        )
        if img["id"] in seen:
            raise DataError(f"{path}: duplicate image id {img['id']}")
        if int(img["height"]) <= 0 or int(img["width"]) <= 0:
            raise DataError(f"{path}: image id {img['id']} has size {img['width']}x{img['height']}")
        seen.add(img["id"])
    return data["images"]


# Annotations are checked column-wise with numpy: COCO train2017 has 860k of them.


def _column(anns: List[dict], key: str, path) -> list:
    try:
        return [ann[key] for ann in anns]
    except (KeyError, TypeError):
        for i, ann in enumerate(anns):
            _require(ann, (key,), path, f"annotation #{i} (id {ann.get('id')})")
        raise


def _int_column(anns: List[dict], key: str, path) -> np.ndarray:
    return int_ids(_column(anns, key, path), path, f"annotation {key}s", DataError)


def _bbox_column(anns: List[dict], path, ids: np.ndarray) -> np.ndarray:
    def fail(i):
        raise DataError(
            f"{path}: annotation id {ids[i]}: 'bbox' must be 4 finite numbers [x, y, w, h], "
            f"got {anns[i]['bbox']!r}"
        )

    column = _column(anns, "bbox", path)
    if not column:
        return np.zeros((0, 4), dtype=np.float64)
    try:
        bbox = np.asarray(column, dtype=np.float64).reshape(len(anns), -1)
    except (ValueError, TypeError):
        bbox = None
    if bbox is None or bbox.shape[1] != 4:
        fail(
            next(
                i
                for i, b in enumerate(column)
                if not isinstance(b, (list, tuple))
                or len(b) != 4
                or not all(isinstance(v, (int, float)) for v in b)
            )
        )
    bad = np.flatnonzero(~np.isfinite(bbox).all(1))
    if len(bad):
        fail(bad[0])
    return bbox.reshape(-1, 4)


def _lookup(
    values: np.ndarray, keys: Sequence[int], ids: np.ndarray, path, what: str
) -> np.ndarray:
    """Position of each value in ``keys``; an error naming the annotation when a value is unknown."""
    keys = np.asarray(keys, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    pos = np.searchsorted(keys[order], values).clip(max=max(len(keys) - 1, 0))
    unknown = np.flatnonzero(keys[order][pos] != values) if len(keys) else np.arange(len(values))
    if len(unknown):
        i = unknown[0]
        raise DataError(
            f"{path}: annotation id {ids[i]} refers to unknown {what} id {values[i]}"
            + (f" (categories: {keys.tolist()})" if what == "category" else "")
        )
    return order[pos]


def parse_annotations(
    data: dict, path, category_ids: Sequence[int], image_ids: Sequence[int]
) -> dict:
    """Checked annotation columns: ``ids``, ``image_index`` (into images), ``labels``, ``crowd``, ``bbox``."""
    if "annotations" not in data:
        logger.warning(
            "%s has no 'annotations' (an image-info file?): every image has no boxes", path
        )
    anns = data.get("annotations", [])
    if not isinstance(anns, list):
        raise DataError(f"{path}: 'annotations' must be a list")
    ids = _int_column(anns, "id", path)
    img = _int_column(anns, "image_id", path)
    check_annotation_ids(ids, path, DataError, image_ids=img)
    cats = _int_column(anns, "category_id", path)
    labels = _lookup(cats, category_ids, ids, path, "category")
    image_index = _lookup(img, image_ids, ids, path, "image")
    crowd = np.asarray([bool(ann.get("iscrowd", 0)) for ann in anns], dtype=bool)
    return {
        "ids": ids,
        "image_id": img,
        "image_index": image_index,
        "labels": labels,
        "crowd": crowd,
        "bbox": _bbox_column(anns, path, ids),
    }


def clean_boxes(anns: dict, sizes: np.ndarray, path) -> Tuple[np.ndarray, np.ndarray]:
    """COCO [x, y, w, h] -> XYXY clipped to the image (``sizes`` (M,2) = width, height per annotation).

    Returns (boxes, keep): empty boxes and boxes fully outside are dropped, boxes reaching outside are
    clipped, each with one warning naming the image and annotation id.
    """
    x, y, w, h = anns["bbox"].T
    xyxy = np.stack([x, y, x + w, y + h], axis=1)
    limits = np.concatenate([sizes, sizes], axis=1).astype(np.float64)
    clipped = np.minimum(np.maximum(xyxy, 0.0), limits)
    empty = (w <= 0) | (h <= 0)
    outside = ~empty & ((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))
    moved = ~empty & ~outside & (np.abs(xyxy - clipped).max(axis=1, initial=0.0) > _CLIP_TOLERANCE)
    for reason, mask in (
        ("has zero or negative size; dropped", empty),
        ("lies outside the image; dropped", outside),
        ("extends outside the image; clipped", moved),
    ):
        for i in np.flatnonzero(mask):
            logger.warning(
                "%s: image id %s, annotation id %s: box [x, y, w, h] = %s %s (image %dx%d, "
                "XYXY after clipping %s)",
                path,
                anns["image_id"][i],
                anns["ids"][i],
                anns["bbox"][i].tolist(),
                reason,
                sizes[i, 0],
                sizes[i, 1],
                [round(float(v), 2) for v in clipped[i]],
            )
    return clipped.astype(np.float32), ~(empty | outside)


def make_records(images: List[dict], anns: dict, img_dir: Path, path) -> List[dict]:
    """One record per image (in file order), its annotations in file order."""
    sizes = np.asarray([[int(img["width"]), int(img["height"])] for img in images], dtype=np.int64)
    boxes, keep = clean_boxes(anns, sizes[anns["image_index"]].reshape(-1, 2), path)
    kept = np.flatnonzero(keep)
    order = kept[np.argsort(anns["image_index"][kept], kind="stable")]
    starts = np.concatenate(
        [[0], np.cumsum(np.bincount(anns["image_index"][order], minlength=len(images)))]
    )
    labels, crowd, img_dir = anns["labels"].astype(np.int64), anns["crowd"], str(img_dir)
    records = []
    for i, img in enumerate(images):
        sel = order[starts[i] : starts[i + 1]]
        record = {
            "image_id": img["id"],
            "file_name": os.path.join(img_dir, img["file_name"]),
            "height": int(sizes[i, 1]),
            "width": int(sizes[i, 0]),
            **empty_record_arrays(),
            "crowd_boxes": np.zeros((0, 4), dtype=np.float32),
        }
        if len(sel):
            is_crowd = crowd[sel]
            # crowd regions are never positives; evaluators ignore detections on them
            record["crowd_boxes"] = boxes[sel[is_crowd]]
            sel = sel[~is_crowd]
            record["boxes"], record["labels"] = boxes[sel], labels[sel]
            record["difficult"] = np.zeros(len(sel), dtype=np.bool_)
        records.append(record)
    return records


@DATASETS.register()
class COCODataset(DetectionDataset):
    """Any COCO-format detection JSON (``ann_file``) with its images in ``img_dir``.

    Relative paths resolve against ``root`` (default: ``data.root``, ``$DETKIT_DATASETS``, ``./datasets``).
    Labels are 0..K-1 in ascending category id order; ``label_to_category_id`` maps back.
    ``filter_empty`` drops images without (non-crowd) boxes -- for training; keep them for evaluation.
    """

    evaluator_type = "coco"
    data_root_param = "root"

    def __init__(
        self,
        ann_file: str,
        img_dir: str,
        filter_empty: bool = False,
        mapper=None,
        skip_broken: bool = False,
        root: Optional[str] = None,
    ):
        super().__init__(mapper=mapper, skip_broken=skip_broken)
        self.ann_file = str(resolve_path(ann_file, root, what="COCO annotation file"))
        self.img_dir = str(resolve_path(img_dir, root, what="COCO image folder"))
        self.source = self.ann_file
        data = load_json(self.ann_file)
        self.label_to_category_id, self.class_names = parse_categories(data, self.ann_file)
        images = parse_images(data, self.ann_file)
        anns = parse_annotations(
            data, self.ann_file, self.label_to_category_id, [img["id"] for img in images]
        )
        records = make_records(images, anns, Path(self.img_dir), self.ann_file)
        if filter_empty:
            kept = [r for r in records if len(r["boxes"])]
            logger.info(
                "%s: filtered out %d of %d images without annotations",
                self.ann_file,
                len(records) - len(kept),
                len(records),
            )
            records = kept
        self.records = records
        self.check_image_files()
        logger.info(
            "loaded %s: %d images, %d boxes, %d classes",
            self.ann_file,
            len(self.records),
            sum(len(r["boxes"]) for r in self.records),
            len(self.class_names),
        )


def records_to_coco(
    records: Sequence[dict],
    class_names: Sequence[str],
    category_ids: Optional[Sequence[int]] = None,
    img_dir: Optional[PathLike] = None,
    difficult_as_crowd: bool = True,
) -> dict:
    """detkit records -> a COCO detection dict (annotation ids 1..M, category ids 1..K by default).

    ``file_name`` is written relative to ``img_dir`` when given. Difficult boxes become ``iscrowd=1``
    (COCO evaluation ignores detections on them, as VOC evaluation does) or plain boxes.
    """
    category_ids = (
        list(category_ids) if category_ids is not None else list(range(1, len(class_names) + 1))
    )
    coco = {
        "images": [],
        "annotations": [],
        "categories": [{"id": cid, "name": name} for cid, name in zip(category_ids, class_names)],
    }
    for rec in records:
        name = (
            os.path.relpath(rec["file_name"], img_dir) if img_dir is not None else rec["file_name"]
        )
        coco["images"].append(
            {
                "id": int(rec["image_id"]),
                "file_name": name,
                "height": int(rec["height"]),
                "width": int(rec["width"]),
            }
        )
        difficult = rec.get("difficult", np.zeros(len(rec["boxes"]), bool))
        for box, label, diff in zip(rec["boxes"], rec["labels"], difficult):
            x1, y1, x2, y2 = (float(v) for v in box)
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": int(rec["image_id"]),
                    "category_id": category_ids[int(label)],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": int(bool(diff) and difficult_as_crowd),
                }
            )
    return coco
