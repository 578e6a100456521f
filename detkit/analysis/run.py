"""One call from ground truth and detections to the analysis report.

:func:`analyze` computes everything ``analysis.json`` holds (PR curves, COCO's error breakdown,
TIDE, the confusion matrix, operating points, the comparison with a second model); :func:`analyze_coco`
also writes the report (``report.html``, figures, CSVs, galleries, ``thresholds.json``) and is what
``tools/analyze.py``, ``tools/test.py --analyze`` and the trainer's final evaluation call.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
from tqdm import tqdm

from ..errors import ConfigError
from ..evaluation.coco_io import (
    Detections,
    GroundTruth,
    check_detections,
    load_coco_gt,
    load_coco_results,
    results_to_detections,
)
from ..evaluation.fast_coco import AREA_NAMES, AREA_RANGES, STAT_NAMES, summarize
from .coco_errors import (
    BREAKDOWN_TYPES,
    MainEvaluation,
    breakdown_curves,
    class_names,
    coco_breakdown,
    evaluate_main,
    operating_points,
    per_class_area_ap,
    pr_curves,
)
from .confusion import confusion_matrix
from .tide import tide_errors

logger = logging.getLogger("detkit")

GtSource = Union[str, os.PathLike, Dict[str, Any], GroundTruth]
ResultsSource = Union[str, os.PathLike, List[Dict[str, Any]], Detections]
TIDE_MAIN = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
VOC_NOTE = [
    "VOC rules: 'difficult' objects are ignored regions and boxes keep the devkit's inclusive "
    "pixel widths; matching and AP follow the COCO evaluator (IoU >= threshold, 101 recall "
    "points), so AP50 may differ slightly from the VOC devkit's AP"
]
_STAGES = 6  # progress steps of one model's analysis (for the bar)


@dataclasses.dataclass
class ModelAnalysis:
    """One results set's numbers, before they are laid out as analysis.json."""

    main: MainEvaluation
    breakdown: Dict
    breakdown_curves: Dict
    tide: Dict
    confusion: Dict
    operating: Dict
    overall_operating: Optional[Dict]


def load_inputs(
    gt: GtSource, results: ResultsSource, img_ids=None
) -> Tuple[GroundTruth, Detections, str, str]:
    """Ground truth (restricted to ``img_ids`` when given) and checked detections, with names."""
    ground = gt if isinstance(gt, GroundTruth) else load_coco_gt(gt)
    if isinstance(results, Detections):
        dets, results_name = results, "<detections>"
    else:
        data, results_name = load_coco_results(results)
        dets = results_to_detections(data, results_name)
    check_detections(dets, ground, results_name)
    if img_ids is not None:
        ground, dets = restrict_to_images(ground, dets, img_ids)
    return ground, dets, ground.source, results_name


def restrict_to_images(
    gt: GroundTruth, dets: Detections, img_ids
) -> Tuple[GroundTruth, Detections]:
    """Only the images ``img_ids`` (the evaluator's processed subset) of both."""
    ids = np.unique(np.asarray(img_ids, np.int64))
    unknown = np.setdiff1d(ids, gt.image_ids)
    if unknown.size:
        raise ConfigError(
            f"image ids not in {gt.source}: {unknown[:10].tolist()}"
            + (" ..." if unknown.size > 10 else "")
        )
    keep = np.isin(gt.ann_image_id, ids)
    ground = dataclasses.replace(
        gt,
        image_ids=ids,
        ann_image_id=gt.ann_image_id[keep],
        ann_category_id=gt.ann_category_id[keep],
        ann_bbox=gt.ann_bbox[keep],
        ann_area=gt.ann_area[keep],
        ann_crowd=gt.ann_crowd[keep],
        ann_ignore=None if gt.ann_ignore is None else gt.ann_ignore[keep],
    )
    sel = np.isin(dets.image_id, ids)
    return ground, Detections(
        dets.image_id[sel], dets.category_id[sel], dets.bbox[sel], dets.score[sel]
    )


def _analyze_model(
    gt: GroundTruth,
    dets: Detections,
    score_thresh: Optional[float],
    iou_thresh: float,
    bar: tqdm,
    records: bool,
) -> ModelAnalysis:
    bar.set_postfix_str("COCO evaluation")
    main = evaluate_main(gt, dets)
    bar.update(1)
    bar.set_postfix_str("breakdown (IoU 0.1, Sim, Oth)")
    curves, has_gt = breakdown_curves(gt, dets, main, progress=bar)
    table, overall_curves = coco_breakdown(gt, curves, has_gt)
    bar.set_postfix_str("operating points")
    operating, overall = operating_points(gt, main)
    bar.update(1)
    bar.set_postfix_str("TIDE")
    tide = tide_errors(gt, dets, records=records)
    bar.update(1)
    bar.set_postfix_str("confusion matrix")
    if score_thresh is None:
        score_thresh = overall["score"] if overall else 0.0
    confusion = confusion_matrix(gt, dets, float(score_thresh), iou_thresh)
    bar.update(1)
    return ModelAnalysis(main, table, overall_curves, tide, confusion, operating, overall)


def _metrics(gt: GroundTruth, main: MainEvaluation) -> Dict[str, Any]:
    stats = summarize(main.precision, main.recall)
    metrics: Dict[str, Any] = {k: float(v) for k, v in zip(STAT_NAMES, stats)}
    p = main.precision[:, :, :, 0, -1]
    metrics["per_class"] = {
        name: float(p[:, :, k].mean()) if (p[:, :, k] > -1).all() else -1.0
        for k, name in enumerate(class_names(gt))
    }
    return metrics


def _notes(gt: GroundTruth, dets: Detections, m: ModelAnalysis) -> List[str]:
    notes = []
    if dets.size == 0:
        notes.append(
            "the results hold no detections: every object is missed, AP is 0 and the breakdown, "
            "operating points and galleries are empty"
        )
    names = class_names(gt)
    n_gt = m.main.matching.n_gt[:, 0]
    has_det = np.isin(gt.cat_ids, dets.category_id)
    no_gt = [n for n, g in zip(names, n_gt) if g == 0]
    no_det = [n for n, d, g in zip(names, has_det, n_gt) if not d and g > 0]
    if no_gt:
        notes.append(
            f"{len(no_gt)} class(es) have no ground truth (no AP, PR curve or operating point): "
            + ", ".join(no_gt[:20])
            + (" ..." if len(no_gt) > 20 else "")
        )
    if no_det and dets.size:
        notes.append(
            f"{len(no_det)} class(es) have ground truth but no detections (AP 0, every object "
            "missed): " + ", ".join(no_det[:20]) + (" ..." if len(no_det) > 20 else "")
        )
    if m.breakdown["all"]["all"]["Sim"] is None and n_gt.sum():
        notes.append(
            "Sim unavailable: the ground truth's categories have no 'supercategory', so "
            "confusions with similar classes cannot be told from other confusions"
        )
    return notes


def _compare(gt: GroundTruth, this: ModelAnalysis, other: ModelAnalysis, name: str) -> Dict:
    ap_this, ap_other = _metrics(gt, this.main)["per_class"], _metrics(gt, other.main)["per_class"]
    per_class = {
        n: {
            "this": ap_this[n],
            "other": ap_other[n],
            "delta": None if ap_this[n] < 0 else ap_this[n] - ap_other[n],
        }
        for n in ap_this
    }

    def errors(m: ModelAnalysis) -> Dict[int, int]:
        return {
            int(i): c["confused"] + c["fp"] + c["missed"]
            for i, c in m.confusion["per_image"].items()
        }

    e_this, e_other = errors(this), errors(other)
    rows = [
        {"image_id": i, "this_errors": e_this[i], "other_errors": e_other.get(i, 0)}
        for i in sorted(e_this)
    ]
    better = sorted(
        (r for r in rows if r["this_errors"] < r["other_errors"]),
        key=lambda r: r["this_errors"] - r["other_errors"],
    )
    worse = sorted(
        (r for r in rows if r["this_errors"] > r["other_errors"]),
        key=lambda r: r["other_errors"] - r["this_errors"],
    )
    a, b = this.breakdown["all"]["all"], other.breakdown["all"]["all"]
    return {
        "other": name,
        "metrics_other": {k: v for k, v in _metrics(gt, other.main).items() if k != "per_class"},
        "per_class_ap": per_class,
        "tide_delta": {k: this.tide["main"][k] - other.tide["main"][k] for k in this.tide["main"]},
        "breakdown_delta": {
            k: None if a[k] is None or b[k] is None else a[k] - b[k] for k in BREAKDOWN_TYPES
        },
        "images_this_better": better[:50],
        "images_other_better": worse[:50],
    }


def analyze(
    gt: GtSource,
    results: ResultsSource,
    *,
    img_ids=None,
    score_thresh: Optional[float] = None,
    iou_thresh: float = 0.5,
    compare: Optional[ResultsSource] = None,
    rules: str = "coco",
    dataset_name: Optional[str] = None,
    results_name: Optional[str] = None,
    error_records: bool = True,
) -> Tuple[Dict[str, Any], GroundTruth, Dict]:
    """The analysis of ``results`` on ``gt`` as analysis.json lays it out (see docs/analysis.md),
    the ground truth it used and the TIDE result (whose per-error records feed the galleries).

    ``score_thresh`` / ``iou_thresh``: the confusion matrix's (default score: the one that
    maximises F1 over all classes at IoU 0.5). ``compare``: a second results set on the same
    ground truth, reported as deltas (this minus other). ``error_records=False``: no per-error
    TIDE records (nothing for the galleries; the numbers are the same)."""
    if not 0.0 < float(iou_thresh) <= 1.0:
        raise ConfigError(
            f"the confusion matrix's IoU threshold must be in (0, 1], got {iou_thresh}"
        )
    if score_thresh is not None and not 0.0 <= float(score_thresh) <= 1.0:
        raise ConfigError(
            f"the confusion matrix's score threshold must be in [0, 1], got {score_thresh}"
        )
    gt, dets, gt_name, res_name = load_inputs(gt, results, img_ids)
    other_dets = other_name = None
    if compare is not None:
        _, other_dets, _, other_name = load_inputs(gt, compare)
    total = _STAGES * (2 if compare is not None else 1)
    with tqdm(total=total, desc="analysis", unit="step", leave=False) as bar:
        this = _analyze_model(gt, dets, score_thresh, iou_thresh, bar, error_records)
        other = None
        if other_dets is not None:
            used = this.confusion["score_thresh"]
            other = _analyze_model(gt, other_dets, used, iou_thresh, bar, False)
    confusion = {k: v for k, v in this.confusion.items() if k != "per_image"}
    analysis = {
        "settings": {
            "dataset": dataset_name or gt_name,
            "results": results_name or res_name,
            "rules": rules,
            "n_images": int(gt.image_ids.size),
            "n_detections": int(dets.size),
            "max_dets": 100,
            "area_ranges": {n: AREA_RANGES[a].tolist() for a, n in enumerate(AREA_NAMES)},
            "score_thresh": float(this.confusion["score_thresh"]),
            "iou_thresh": float(iou_thresh),
            "compare": other_name,
        },
        "metrics": _metrics(gt, this.main),
        "per_class_area_ap": per_class_area_ap(gt, this.main),
        "pr_curves": pr_curves(gt, this.main),
        "coco_breakdown": this.breakdown,
        "coco_breakdown_curves": this.breakdown_curves,
        "tide": {k: this.tide[k] for k in ("main", "special", "ap50")},
        "confusion_matrix": confusion,
        "operating_points": this.operating,
        "overall_operating_point": this.overall_operating,
        "notes": _notes(gt, dets, this) + (VOC_NOTE if rules == "voc" else []),
        "compare": None if other is None else _compare(gt, this, other, other_name),
    }
    tide_for_gallery = dict(this.tide, per_image=this.confusion["per_image"])
    return analysis, gt, tide_for_gallery


def analyze_coco(
    gt: GtSource,
    results: ResultsSource,
    output_dir: Union[str, os.PathLike],
    *,
    img_ids=None,
    image_paths: Optional[Mapping[int, str]] = None,
    score_thresh: Optional[float] = None,
    iou_thresh: float = 0.5,
    compare: Optional[ResultsSource] = None,
    galleries: bool = True,
    rules: str = "coco",
    dataset_name: Optional[str] = None,
    results_name: Optional[str] = None,
) -> Path:
    """Analyse and write the report into ``output_dir``; returns the path of ``report.html``.

    ``image_paths``: image id -> image file, for the galleries (None or ``galleries=False``: none).
    Also writes ``thresholds.json``, the per-class best-F1 scores that ``Detector.predict`` and
    ``tools/video.py --score-thresh`` accept."""
    from .gallery import build_gallery
    from .report import write_report
    from .thresholds import write_thresholds

    analysis, ground, tide = analyze(
        gt,
        results,
        img_ids=img_ids,
        score_thresh=score_thresh,
        iou_thresh=iou_thresh,
        compare=compare,
        rules=rules,
        dataset_name=dataset_name,
        results_name=results_name,
        error_records=bool(galleries and image_paths),
    )
    out = Path(output_dir)
    entries = None
    if galleries and image_paths:
        entries = build_gallery(ground, tide, dict(image_paths), per_image_errors=tide["per_image"])
    elif galleries:
        analysis["notes"].append(
            "no galleries: the image files were not given (tools/analyze.py --images DIR)"
        )
    overall = analysis["overall_operating_point"]
    write_thresholds(
        out / "thresholds.json",
        {n: (op["score"] if op else None) for n, op in analysis["operating_points"].items()},
        {
            "default": overall["score"] if overall else None,
            "iou_thresh": 0.5,
            "chosen_by": "the score that maximises each class's F1 at IoU 0.5 (COCO matching)",
            "dataset": analysis["settings"]["dataset"],
            "results": analysis["settings"]["results"],
        },
    )
    report = write_report(analysis, out, gallery_entries=entries)
    logger.info("analysis report: %s", report)
    return Path(report)
