"""COCO bbox evaluation: the model-facing ``COCOEvaluator`` and ``evaluate_coco_results`` for files.

Two engines give the same 12 numbers (to 1e-9; tests check it): ``"fast"`` (detkit's vectorised
NumPy implementation, :mod:`detkit.evaluation.fast_coco`) and ``"pycocotools"`` (the reference).
The input checks in :mod:`detkit.evaluation.coco_io` run for both.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..errors import ConfigError
from ..registry import EVALUATORS
from ..utils.distributed import gather_to_main
from .coco_io import (
    Detections,
    GroundTruth,
    PathOrDict,
    PathOrList,
    check_detections,
    load_coco_gt,
    load_coco_results,
    results_to_detections,
)
from .common import (
    check_processed_ids,
    format_table,
    per_class_table,
    to_numpy,
    write_json,
)
from .fast_coco import STAT_NAMES, COCOEvalOutput, evaluate_fast

logger = logging.getLogger("detkit")

ENGINES = ("fast", "pycocotools")


def _check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ConfigError(
            f"unknown COCO evaluation engine '{engine}' (test.evaluator_engine); valid: "
            + " | ".join(ENGINES)
        )


def evaluate_pycocotools(
    gt: GroundTruth, dets: Detections, img_ids: Optional[np.ndarray] = None
) -> COCOEvalOutput:
    """Run pycocotools' COCOeval (its printout goes to the debug log)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        coco_gt = COCO()
        # pycocotools writes 'ignore' flags into the annotation dicts: give it copies
        coco_gt.dataset = {
            **gt.dataset,
            "annotations": [dict(a) for a in gt.dataset["annotations"]],
        }
        coco_gt.createIndex()
        if dets.size:
            coco_dt = coco_gt.loadRes(dets.to_coco_list())
        else:  # loadRes() fails on an empty list; an empty result set scores 0, not an error
            coco_dt = COCO()
            coco_dt.dataset = {
                "images": list(gt.dataset["images"]),
                "categories": list(gt.dataset["categories"]),
                "annotations": [],
            }
            coco_dt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if img_ids is not None:
            coco_eval.params.imgIds = [int(i) for i in img_ids]
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    logger.debug("pycocotools output:\n%s", printed.getvalue())
    return COCOEvalOutput(
        np.asarray(coco_eval.stats, np.float64),
        coco_eval.eval["precision"],
        coco_eval.eval["recall"],
        np.asarray(coco_eval.params.catIds, np.int64),
    )


def run_coco_engine(
    gt: GroundTruth, dets: Detections, img_ids: Optional[np.ndarray] = None, engine: str = "fast"
) -> COCOEvalOutput:
    _check_engine(engine)
    if engine == "fast":
        return evaluate_fast(gt, dets, img_ids)
    return evaluate_pycocotools(gt, dets, img_ids)


def metrics_from_output(
    out: COCOEvalOutput, cat_ids: Sequence[int], names: Sequence[str]
) -> Dict[str, Any]:
    """The 12 numbers (fractions, -1 = no ground truth) plus ``per_class`` AP@[.5:.95] by name."""
    metrics: Dict[str, Any] = {k: float(v) for k, v in zip(STAT_NAMES, out.stats)}
    per_class = {}
    for name, cat_id in zip(names, cat_ids):
        k = int(np.searchsorted(out.cat_ids, cat_id))
        p = out.precision[:, :, k, 0, -1]
        per_class[name] = float(np.mean(p[p > -1])) if (p > -1).any() else -1.0
    metrics["per_class"] = per_class
    return metrics


def log_coco_metrics(metrics: Dict[str, Any], title: str) -> None:
    logger.info("%s\n%s", title, format_table(STAT_NAMES, [[metrics[k] for k in STAT_NAMES]]))
    logger.info(
        "per-category bbox AP@[.5:.95] (n/a: no ground truth):\n%s",
        per_class_table(metrics["per_class"], "AP"),
    )


def _evaluate(
    gt: GroundTruth,
    dets: Detections,
    img_ids: Optional[np.ndarray],
    engine: str,
    cat_ids: Sequence[int],
    names: Sequence[str],
    output_dir: Optional[str],
) -> Dict:
    n_images = len(gt.image_ids) if img_ids is None else len(img_ids)
    if dets.size == 0:
        logger.warning(
            "no detections to evaluate: AP and AR are 0 (-1 where an area range has no "
            "ground truth)"
        )
    metrics = metrics_from_output(run_coco_engine(gt, dets, img_ids, engine), cat_ids, names)
    log_coco_metrics(
        metrics,
        f"COCO bbox evaluation of {gt.source} ({n_images} images, "
        f"{dets.size} detections, engine '{engine}'):",
    )
    if output_dir is not None:
        write_json(dets.to_coco_list(), Path(output_dir) / "coco_results.json")
        path = write_json(metrics, Path(output_dir) / "metrics.json")
        logger.info("wrote %s and coco_results.json", path)
    return metrics


def evaluate_coco_results(
    gt: PathOrDict, results: PathOrList, engine: str = "fast", output_dir: Optional[str] = None
) -> Dict[str, Any]:
    """Evaluate a COCO results file/list against a ground-truth file/dict (all its images).

    Returns the 12 numbers plus ``per_class`` keyed by the ground truth's category names.
    """
    _check_engine(engine)
    ground = load_coco_gt(gt)
    data, source = load_coco_results(results)
    dets = results_to_detections(data, source)
    check_detections(dets, ground, source)
    names = [ground.cat_names[int(c)] for c in ground.cat_ids]
    return _evaluate(ground, dets, None, engine, ground.cat_ids.tolist(), names, output_dir)


@EVALUATORS.register()
class COCOEvaluator:
    """Collects model outputs and scores them with COCO's bbox metrics.

    ``process(samples, outputs)``: samples carry ``image_id``; outputs carry ``boxes`` (N, 4) XYXY in
    original-image pixels, ``scores`` and 0-based ``labels`` (torch or NumPy).  ``evaluate()``
    scores only the images that were processed (a warning says when that is a subset of
    ``ann_file``); under torch.distributed the results are gathered to rank 0, which returns the
    metrics; the other ranks return ``{}``.
    """

    def __init__(
        self,
        ann_file: str,
        label_to_category_id: Sequence[int],
        class_names: Sequence[str],
        engine: str = "fast",
        output_dir: Optional[str] = None,
    ):
        _check_engine(engine)
        if len(label_to_category_id) != len(class_names):
            raise ValueError(
                f"label_to_category_id has {len(label_to_category_id)} entries but "
                f"class_names has {len(class_names)}"
            )
        self.gt = load_coco_gt(ann_file)
        self.label_to_category_id = np.asarray(label_to_category_id, np.int64)
        unknown = np.setdiff1d(self.label_to_category_id, self.gt.cat_ids)
        if unknown.size:
            raise ValueError(
                f"label_to_category_id has category ids not in {ann_file}: {unknown.tolist()}"
            )
        self.class_names = list(class_names)
        self.engine = engine
        self.output_dir = output_dir
        self.reset()

    def reset(self) -> None:
        self._image_ids: List[int] = []
        self._dets: List[Detections] = []

    def process(self, samples: Sequence[Dict], outputs: Sequence[Dict]) -> None:
        if len(samples) != len(outputs):
            raise ValueError(f"process() got {len(samples)} samples but {len(outputs)} outputs")
        for sample, output in zip(samples, outputs):
            image_id = int(sample["image_id"])
            self._image_ids.append(image_id)
            self._dets.append(self._to_detections(image_id, output))

    def _to_detections(self, image_id: int, output: Dict) -> Detections:
        boxes = to_numpy(output["boxes"]).astype(np.float64)
        scores = to_numpy(output["scores"]).astype(np.float64).reshape(-1)
        labels = to_numpy(output["labels"]).astype(np.int64).reshape(-1)
        if boxes.size == 0 and scores.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4 or not len(boxes) == len(scores) == len(labels):
            raise ValueError(
                f"image {image_id}: outputs need boxes (N, 4), scores (N,), labels (N,); "
                f"got {boxes.shape}, {scores.shape}, {labels.shape}"
            )
        bad = (labels < 0) | (labels >= len(self.label_to_category_id))
        if bad.any():
            raise ValueError(
                f"image {image_id}: labels {np.unique(labels[bad]).tolist()} outside "
                f"0..{len(self.label_to_category_id) - 1}"
            )
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        return Detections(
            np.full(len(scores), image_id, np.int64),
            self.label_to_category_id[labels],
            xywh,
            scores,
        )

    def evaluate(self) -> Dict[str, Any]:
        gathered = gather_to_main([(self._image_ids, self._dets)])
        if gathered is None:
            return {}
        image_ids = [i for ids, _ in gathered for i in ids]
        dets = Detections.concat([d for _, parts in gathered for d in parts])
        if image_ids:
            img_ids = check_processed_ids(image_ids, self.gt.image_ids.tolist(), self.gt.source)
        else:
            logger.warning(
                "COCOEvaluator.evaluate(): no images were processed; scoring empty results "
                "on every image of %s",
                self.gt.source,
            )
            img_ids = None
        check_detections(dets, self.gt, "model outputs")
        return _evaluate(
            self.gt,
            dets,
            img_ids,
            self.engine,
            self.label_to_category_id.tolist(),
            self.class_names,
            self.output_dir,
        )
