"""Loading and checking COCO ground truth and detection results, shared by both COCO engines.

Everything that can make pycocotools return a silently wrong number is rejected here, before either
engine runs: duplicate annotation ids or id 0 in the ground truth (pycocotools stores the matched
ground-truth id in the detection, so id 0 reads as "unmatched" and duplicate ids fetch the wrong box),
result image ids or category ids that the ground truth does not know, and non-finite numbers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..utils.coco_json import check_annotation_ids, int_ids, read_json
from .common import short_list as _short

logger = logging.getLogger("detkit")

PathOrDict = Union[str, Path, Dict[str, Any]]
PathOrList = Union[str, Path, List[Dict[str, Any]]]


@dataclass
class Detections:
    """COCO-style detections as flat arrays; ``bbox`` is XYWH in original-image pixels."""

    image_id: np.ndarray  # int64 (N,)
    category_id: np.ndarray  # int64 (N,)
    bbox: np.ndarray  # float64 (N, 4)
    score: np.ndarray  # float64 (N,)

    @property
    def size(self) -> int:
        return int(self.score.shape[0])

    @staticmethod
    def empty() -> "Detections":
        return Detections(
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros((0, 4), np.float64),
            np.zeros(0, np.float64),
        )

    @staticmethod
    def concat(parts: Sequence["Detections"]) -> "Detections":
        parts = [p for p in parts if p.size]
        if not parts:
            return Detections.empty()
        return Detections(
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in ("image_id", "category_id", "bbox", "score")
            )
        )

    def to_coco_list(self) -> List[Dict[str, Any]]:
        """The COCO results format: ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``."""
        return [
            {"image_id": i, "category_id": c, "bbox": b, "score": s}
            for i, c, b, s in zip(
                self.image_id.tolist(),
                self.category_id.tolist(),
                self.bbox.tolist(),
                self.score.tolist(),
            )
        ]


@dataclass
class GroundTruth:
    """A checked COCO ground-truth dict plus its annotations as arrays (file order kept)."""

    source: str  # the file name, or "<dict>", for error messages
    dataset: Dict[str, Any]
    image_ids: np.ndarray  # sorted unique ids from "images"
    cat_ids: np.ndarray  # sorted unique ids from "categories"
    cat_names: Dict[int, str]
    ann_image_id: np.ndarray  # int64 (G,)
    ann_category_id: np.ndarray  # int64 (G,)
    ann_bbox: np.ndarray  # float64 (G, 4) XYWH
    ann_area: np.ndarray  # float64 (G,), the "area" field (what COCO's area ranges use)
    ann_crowd: np.ndarray  # bool (G,)
    # bool (G,) or None: ground truth to ignore besides crowd and out-of-area boxes (VOC's
    # 'difficult', the error analysis' relabelled classes); ORed with crowd, as COCO's MATLAB code
    ann_ignore: Optional[np.ndarray] = None


def load_coco_gt(gt: PathOrDict) -> GroundTruth:
    """Read (if a path) and check a COCO ground-truth dict; raise ``ValueError`` naming the problem."""
    if isinstance(gt, dict):
        source, dataset = "<ground-truth dict>", gt
    else:
        source, dataset = str(gt), read_json(gt, "COCO ground-truth")
    if not isinstance(dataset, dict):
        raise ValueError(
            f"{source}: a COCO ground truth is a JSON object, got {type(dataset).__name__}"
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise ValueError(f"{source}: missing or invalid '{key}' list in the COCO ground truth")
    anns = dataset["annotations"]
    _check_annotation_ids(anns, source)
    image_ids = int_ids([im.get("id") for im in dataset["images"]], source, "images[].id")
    cat_ids = int_ids([c.get("id") for c in dataset["categories"]], source, "categories[].id")
    try:
        ann_img = int_ids([a["image_id"] for a in anns], source, "annotations[].image_id")
        ann_cat = int_ids([a["category_id"] for a in anns], source, "annotations[].category_id")
        bbox = np.asarray([a["bbox"] for a in anns], np.float64).reshape(len(anns), 4)
        area = np.asarray([a["area"] for a in anns], np.float64).reshape(len(anns))
    except KeyError as e:
        raise ValueError(f"{source}: an annotation has no {e} field") from None
    except (TypeError, ValueError):
        raise ValueError(
            f"{source}: every annotation needs a 4-number 'bbox' and a numeric 'area'"
        ) from None
    crowd = np.asarray([bool(a.get("iscrowd", 0)) for a in anns], bool).reshape(len(anns))
    _warn_unknown_refs(ann_img, image_ids, ann_cat, cat_ids, source)
    return GroundTruth(
        source,
        dataset,
        np.unique(image_ids),
        np.unique(cat_ids),
        {int(c["id"]): str(c.get("name", c["id"])) for c in dataset["categories"]},
        ann_img,
        ann_cat,
        bbox,
        area,
        crowd,
    )


def _check_annotation_ids(anns: list, source: str) -> None:
    ids = [a.get("id") for a in anns]
    if any(i is None for i in ids):
        raise ValueError(f"{source}: annotation #{ids.index(None)} has no 'id'")
    check_annotation_ids(int_ids(ids, source, "annotations[].id"), source)


def _warn_unknown_refs(ann_img, image_ids, ann_cat, cat_ids, source) -> None:
    bad_img = np.setdiff1d(ann_img, image_ids)
    if bad_img.size:
        logger.warning(
            "%s: annotations refer to image ids not in 'images' (%s); they are not evaluated",
            source,
            _short(bad_img.tolist()),
        )
    bad_cat = np.setdiff1d(ann_cat, cat_ids)
    if bad_cat.size:
        logger.warning(
            "%s: annotations refer to category ids not in 'categories' (%s); they are not "
            "evaluated",
            source,
            _short(bad_cat.tolist()),
        )


def load_coco_results(results: PathOrList) -> Tuple[List[Dict[str, Any]], str]:
    """Read a COCO results file (a JSON list; a dict wrapping the list in "annotations" is accepted)."""
    if isinstance(results, (str, Path)):
        source, data = str(results), read_json(results, "COCO results")
    else:
        source, data = "<results list>", results
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        logger.info("%s: reading the detections from its 'annotations' list", source)
        data = data["annotations"]
    if not isinstance(data, list):
        raise ValueError(
            f"{source}: COCO results must be a JSON list of detections, got {type(data).__name__}"
        )
    return data, source


def results_to_detections(results: List[Dict[str, Any]], source: str) -> Detections:
    """Convert a COCO results list to :class:`Detections`, naming the first malformed entry."""
    if not results:
        return Detections.empty()
    try:
        img = [r["image_id"] for r in results]
        cat = [r["category_id"] for r in results]
        score = np.asarray([r["score"] for r in results], np.float64).reshape(len(results))
        bbox = np.asarray([r["bbox"] for r in results], np.float64).reshape(len(results), 4)
    except (KeyError, TypeError, ValueError):
        for n, r in enumerate(results):
            ok = isinstance(r, dict) and {"image_id", "category_id", "bbox", "score"} <= set(r)
            if not ok or np.size(r["bbox"]) != 4:
                raise ValueError(
                    f"{source}: detection #{n} needs 'image_id', 'category_id', "
                    f"'bbox' [x, y, w, h] and 'score'; got {r!r}"
                ) from None
        raise ValueError(
            f"{source}: detections have non-numeric 'bbox' or 'score' values"
        ) from None
    return Detections(
        int_ids(img, source, "image_id"), int_ids(cat, source, "category_id"), bbox, score
    )


def check_detections(dets: Detections, gt: GroundTruth, source: str) -> None:
    """Reject detections that pycocotools would reject or silently drop."""
    bad_img = np.setdiff1d(dets.image_id, gt.image_ids)
    if bad_img.size:
        raise ValueError(
            f"{source}: result image ids not in the ground truth {gt.source}: "
            f"{_short(bad_img.tolist())}"
        )
    bad_cat = np.setdiff1d(dets.category_id, gt.cat_ids)
    if bad_cat.size:
        raise ValueError(
            f"{source}: result category ids not in the ground truth {gt.source}: "
            f"{_short(bad_cat.tolist())} (known: {_short(gt.cat_ids.tolist(), 100)})"
        )
    finite = np.isfinite(dets.score) & np.isfinite(dets.bbox).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"{source}: {bad.size} detections have NaN/inf in 'bbox' or 'score' "
            f"(first: #{_short(bad.tolist(), 5)})"
        )
