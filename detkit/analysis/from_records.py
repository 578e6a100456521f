"""The error analysis of a detkit dataset's evaluation: ground truth and detections from what the
engine holds in memory, and :func:`analyze_dataset`, which tools/test.py ``--analyze`` and the
trainer's final evaluation call.

COCO-style datasets (``evaluator_type == "coco"``) are analysed against their ``ann_file`` with the
``coco_results.json`` their evaluator wrote. Datasets without a COCO file (VOC-style: records with
``difficult`` boxes) are turned into a COCO ground truth here: category id = detkit label + 1,
boxes XYWH (detkit's 0-based exclusive XYXY: ``w = x2 - x1``), ``area = w * h``, and the
``difficult`` boxes marked in ``GroundTruth.ann_ignore`` (matched detections count neither way); the
raw results are the ``results.json`` entries of ``detkit.engine.launch.evaluate_main``
(``{"image_id", "category_id": label + 1, "bbox": [x, y, w, h], "score"}``).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from ..evaluation.coco_io import (
    Detections,
    GroundTruth,
    load_coco_gt,
    results_to_detections,
)
from .run import analyze_coco

logger = logging.getLogger("detkit")

__all__ = [
    "analyze_dataset",
    "detections_from_results",
    "ground_truth_from_records",
    "records_image_paths",
]


def _record_arrays(rec: Mapping[str, Any], num_classes: int):
    image_id = int(rec["image_id"])
    boxes = np.asarray(rec.get("boxes", np.zeros((0, 4))), np.float64).reshape(-1, 4)
    labels = np.asarray(rec.get("labels", np.zeros(0)), np.int64).reshape(-1)
    difficult = rec.get("difficult")
    difficult = (
        np.zeros(len(labels), bool)
        if difficult is None
        else np.asarray(difficult, bool).reshape(-1)
    )
    if not len(boxes) == len(labels) == len(difficult):
        raise ValueError(
            f"record of image {image_id}: boxes, labels and difficult have different lengths "
            f"({len(boxes)}, {len(labels)}, {len(difficult)})"
        )
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise ValueError(
            f"record of image {image_id}: labels {np.unique(labels[bad]).tolist()} outside "
            f"0..{num_classes - 1}"
        )
    return image_id, boxes, labels, difficult


def ground_truth_from_records(
    records: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    source: str = "<dataset records>",
) -> GroundTruth:
    """A COCO :class:`GroundTruth` of detkit dataset records (``image_id``, ``file_name``,
    ``height``, ``width``, ``boxes`` XYXY 0-based exclusive, ``labels`` 0..K-1, ``difficult``).

    Category ids are labels + 1 (named ``class_names``), boxes XYWH, ``area = w * h``, no crowd;
    ``difficult`` boxes become ``ann_ignore`` (VOC: a detection matching one is neither a true nor a
    false positive). Annotation ids run 1, 2, ... in record order. ``source`` names the ground truth
    in messages."""
    class_names = list(class_names)
    images: List[Dict[str, Any]] = []
    annotations: List[Dict[str, Any]] = []
    ignore: List[np.ndarray] = []
    for rec in records:
        image_id, boxes, labels, difficult = _record_arrays(rec, len(class_names))
        image = {"id": image_id}
        for key in ("file_name", "height", "width"):
            if key in rec:
                image[key] = rec[key] if key == "file_name" else int(rec[key])
        images.append(image)
        wh = boxes[:, 2:] - boxes[:, :2]
        for box, size, label, hard in zip(
            boxes.tolist(), wh.tolist(), labels.tolist(), difficult.tolist()
        ):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label) + 1,
                    "bbox": [box[0], box[1], size[0], size[1]],
                    "area": size[0] * size[1],
                    "iscrowd": 0,
                    "difficult": int(hard),
                }
            )
        ignore.append(difficult)
    ids = [im["id"] for im in images]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{source}: the records contain the same image_id more than once")
    dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": str(name)} for k, name in enumerate(class_names)],
    }
    gt = load_coco_gt(dataset)
    ann_ignore = np.concatenate(ignore) if ignore else np.zeros(0, bool)
    return replace(gt, source=source, ann_ignore=ann_ignore)


def detections_from_results(
    results: Sequence[Mapping[str, Any]], source: str = "<results>"
) -> Detections:
    """:class:`Detections` of raw results as ``evaluate_main`` writes them to ``results.json``
    (``{"image_id", "category_id": label + 1, "bbox": [x, y, w, h], "score"}``, the category ids
    of :func:`ground_truth_from_records`). A malformed entry is a ``ValueError`` naming it."""
    return results_to_detections(list(results), source)


def records_image_paths(
    records: Sequence[Mapping[str, Any]], image_ids: Optional[Sequence[int]] = None
) -> Dict[int, str]:
    """``{image_id: file_name}`` of the records (only ``image_ids`` when given), for galleries."""
    keep = None if image_ids is None else {int(i) for i in image_ids}
    return {
        int(r["image_id"]): str(r["file_name"])
        for r in records
        if r.get("file_name") and (keep is None or int(r["image_id"]) in keep)
    }


def _dataset_name(dataset: Any) -> Optional[str]:
    source = getattr(dataset, "source", None) or getattr(dataset, "names", None)
    if isinstance(source, (list, tuple)):
        return " + ".join(str(s) for s in source)
    return str(source) if source else type(dataset).__name__


def analyze_dataset(
    dataset: Any,
    output_dir: Union[str, Path],
    image_ids: Optional[Sequence[int]] = None,
    *,
    coco_results: Union[str, Path, Sequence[Mapping[str, Any]], None] = None,
    results: Optional[Sequence[Mapping[str, Any]]] = None,
    score_thresh: Optional[float] = None,
    iou_thresh: float = 0.5,
    galleries: bool = True,
    results_name: Optional[str] = None,
) -> Path:
    """Write the error analysis of one evaluation of ``dataset`` into ``output_dir``; returns its
    ``report.html``.

    ``image_ids``: the images that were predicted (None: all of the dataset's). COCO-style datasets
    (``evaluator_type == "coco"``) take ``coco_results`` (the evaluator's ``coco_results.json`` or
    its list) and are analysed against ``dataset.ann_file`` with COCO's rules; other datasets take
    ``results`` (``results.json``'s list) and are analysed against their records with VOC's rules.
    Galleries show the records' image files when ``galleries``."""
    records = list(dataset.records)
    if image_ids is not None:
        image_ids = sorted({int(i) for i in image_ids})
    paths = records_image_paths(records, image_ids) if galleries else None
    common = dict(
        img_ids=image_ids,
        image_paths=paths,
        score_thresh=score_thresh,
        iou_thresh=iou_thresh,
        galleries=bool(galleries and paths),
        dataset_name=_dataset_name(dataset),
        results_name=results_name,
    )
    kind = getattr(dataset, "evaluator_type", None)
    if kind == "coco":
        if coco_results is None:
            raise ValueError("analyze_dataset: a COCO-style dataset needs coco_results")
        return analyze_coco(dataset.ann_file, coco_results, output_dir, rules="coco", **common)
    if kind != "voc":
        raise ValueError(
            f"{type(dataset).__name__}.evaluator_type is {kind!r}: the analysis takes 'coco' or "
            "'voc' datasets"
        )
    if results is None:
        raise ValueError("analyze_dataset: a VOC-style dataset needs the raw results")
    if image_ids is not None:
        keep = set(image_ids)
        records = [r for r in records if int(r["image_id"]) in keep]
    gt = ground_truth_from_records(records, dataset.class_names, source=_dataset_name(dataset))
    dets = detections_from_results(results, source=results_name or "<results>")
    return analyze_coco(gt, dets, output_dir, rules="voc", **common)
