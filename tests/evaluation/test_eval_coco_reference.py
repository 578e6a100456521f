"""COCO evaluation against published reference numbers (shared/testdata, see PROVENANCE.md)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from reference_cases import FAKE_BBOX, VAL100, VAL100_STATS
from synthetic_coco import COCO_STATS, stats_of

from detkit.evaluation import COCOEvaluator, build_evaluator, evaluate_coco_results
from detkit.registry import EVALUATORS

ENGINES = ["fast", "pycocotools"]


@pytest.mark.parametrize("engine", ENGINES)
def test_val2014_fake_results_match_pycocotools_numbers(testdata, engine):
    metrics = evaluate_coco_results(testdata / VAL100, testdata / FAKE_BBOX, engine=engine)
    assert set(metrics) == set(COCO_STATS) | {"per_class"}
    np.testing.assert_allclose(stats_of(metrics), VAL100_STATS, rtol=0, atol=1e-9)
    assert len(metrics["per_class"]) == 80 and metrics["per_class"]["fire hydrant"] == -1.0


@pytest.mark.parametrize("engine", ENGINES)
def test_crowd_free_variant(testdata, engine):
    folder = testdata / "review_object_detection_metrics/tests/test_coco_eval"
    with open(folder / "dets/sampled_bbox_results.json") as f:
        wrapped = json.load(f)
    assert isinstance(wrapped, dict)  # detections wrapped under "annotations"
    metrics = evaluate_coco_results(
        folder / "gts/sampled_gts_bbox_area.json", wrapped["annotations"], engine=engine
    )
    expected = [
        0.503647,
        0.696973,
        0.571667,
        0.593252,
        0.557991,
        0.489363,
        0.386813,
        0.593680,
        0.595353,
    ]
    np.testing.assert_allclose(stats_of(metrics)[:9], expected, rtol=0, atol=5e-7)
    # the wrapped file itself is accepted too
    same = evaluate_coco_results(
        folder / "gts/sampled_gts_bbox_area.json",
        folder / "dets/sampled_bbox_results.json",
        engine=engine,
    )
    assert stats_of(same) == stats_of(metrics)


@pytest.mark.parametrize("engine", ENGINES)
def test_detectron2_two_image_case(testdata, engine):
    metrics = evaluate_coco_results(
        testdata / "detectron2/d2_fast_eval_gt.json",
        testdata / "detectron2/d2_fast_eval_dets.json",
        engine=engine,
    )
    expected = [0.7504950495, 1, 1, 0.7, 0.8, -1, 0.4, 0.75, 0.75, 0.7, 0.8, -1]
    np.testing.assert_allclose(stats_of(metrics), expected, rtol=0, atol=1e-9)


def test_faster_coco_eval_dataset_engines_agree(testdata):
    folder = testdata / "faster_coco_eval/tests/dataset"
    fast, ref = (
        evaluate_coco_results(folder / "gt_dataset.json", folder / "dt_dataset.json", engine=e)
        for e in ENGINES
    )
    np.testing.assert_allclose(stats_of(fast), stats_of(ref), rtol=0, atol=1e-9)
    assert fast["per_class"] == pytest.approx(ref["per_class"], abs=1e-9)


def test_duplicate_annotation_ids_are_rejected(testdata):
    path = testdata / "mmdetection/tests/data/coco_wrong_format_sample.json"
    with open(path) as f:
        ids = [a["id"] for a in json.load(f)["annotations"]]
    assert len(ids) != len(set(ids))  # the file really has duplicates
    for engine in ENGINES:
        with pytest.raises(
            ValueError, match=r"coco_wrong_format_sample\.json.*duplicate annotation ids 1"
        ):
            evaluate_coco_results(path, [], engine=engine)


def test_annotation_id_zero_is_rejected():
    gt = {
        "images": [{"id": 1}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [
            {
                "id": 0,
                "image_id": 1,
                "category_id": 1,
                "bbox": [0, 0, 10, 10],
                "area": 100,
                "iscrowd": 0,
            }
        ],
    }
    with pytest.raises(ValueError, match="annotation id 0"):
        evaluate_coco_results(gt, [])


def test_unknown_result_image_and_category_ids_are_named(testdata):
    dets = [{"image_id": 123456789, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]
    with pytest.raises(ValueError, match="image ids not in the ground truth.*123456789"):
        evaluate_coco_results(testdata / VAL100, dets)
    dets = [{"image_id": 42, "category_id": 1000, "bbox": [0, 0, 5, 5], "score": 0.5}]
    with pytest.raises(ValueError, match="category ids not in the ground truth.*1000"):
        evaluate_coco_results(testdata / VAL100, dets)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        evaluate_coco_results(tmp_path / "nope.json", [])


@pytest.mark.parametrize("engine", ENGINES)
def test_empty_results_give_zero_with_a_warning(testdata, engine, caplog):
    with caplog.at_level(logging.WARNING, logger="detkit"):
        metrics = evaluate_coco_results(
            testdata / "detectron2/d2_fast_eval_gt.json", [], engine=engine
        )
    assert "no detections" in caplog.text
    # no large ground truth in this file: -1 there, 0 everywhere else
    assert stats_of(metrics) == [0, 0, 0, 0, 0, -1, 0, 0, 0, 0, 0, -1]


def _model_outputs(testdata):
    """The fake val2014 results regrouped as per-image model outputs (torch, XYXY, 0-based labels)."""
    with open(testdata / VAL100) as f:
        gt = json.load(f)
    with open(testdata / FAKE_BBOX) as f:
        dets = json.load(f)
    cat_ids = sorted(c["id"] for c in gt["categories"])
    names = {c["id"]: c["name"] for c in gt["categories"]}
    per_image = {im["id"]: [] for im in gt["images"]}
    for d in dets:
        per_image[d["image_id"]].append(d)
    samples, outputs = [], []
    for image_id, ds in per_image.items():
        xywh = torch.tensor([d["bbox"] for d in ds], dtype=torch.float64).reshape(-1, 4)
        samples.append({"image_id": image_id})
        outputs.append(
            {
                "boxes": torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
                "scores": torch.tensor([d["score"] for d in ds], dtype=torch.float64),
                "labels": torch.tensor([cat_ids.index(d["category_id"]) for d in ds]),
            }
        )
    return samples, outputs, cat_ids, [names[c] for c in cat_ids]


@pytest.mark.parametrize("engine", ENGINES)
def test_evaluator_on_model_outputs(testdata, engine, tmp_path):
    samples, outputs, cat_ids, names = _model_outputs(testdata)
    evaluator = EVALUATORS.get("COCOEvaluator")(
        str(testdata / VAL100), cat_ids, names, engine=engine, output_dir=str(tmp_path)
    )
    evaluator.reset()
    for i in range(0, len(samples), 8):
        evaluator.process(samples[i : i + 8], outputs[i : i + 8])
    metrics = evaluator.evaluate()
    np.testing.assert_allclose(
        stats_of(metrics), VAL100_STATS, rtol=0, atol=1e-6
    )  # XYXY round trip
    with open(tmp_path / "metrics.json") as f:
        assert json.load(f) == metrics
    with open(tmp_path / "coco_results.json") as f:
        assert len(json.load(f)) == 734
    assert list(metrics["per_class"]) == names


def test_evaluator_scores_processed_images_only_and_rejects_repeats(testdata, caplog):
    samples, outputs, cat_ids, names = _model_outputs(testdata)
    evaluator = COCOEvaluator(str(testdata / VAL100), cat_ids, names)
    evaluator.process(samples[:50], outputs[:50])
    with caplog.at_level(logging.WARNING, logger="detkit"):
        half = evaluator.evaluate()
    assert "evaluating 50 of the 100 images" in caplog.text
    subset = {im for im in (s["image_id"] for s in samples[:50])}
    with open(testdata / FAKE_BBOX) as f:
        dets = [d for d in json.load(f) if d["image_id"] in subset]
    with open(testdata / VAL100) as f:
        gt = json.load(f)
    gt["images"] = [im for im in gt["images"] if im["id"] in subset]
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in subset]
    np.testing.assert_allclose(stats_of(half), stats_of(evaluate_coco_results(gt, dets)), atol=1e-6)
    evaluator.process(samples[:1], outputs[:1])  # e.g. a padding DistributedSampler
    with pytest.raises(ValueError, match="processed more than once"):
        evaluator.evaluate()


def test_evaluator_checks_labels_and_engine(testdata):
    samples, outputs, cat_ids, names = _model_outputs(testdata)
    with pytest.raises(ValueError, match="unknown COCO evaluation engine 'fastest'"):
        COCOEvaluator(str(testdata / VAL100), cat_ids, names, engine="fastest")
    with pytest.raises(ValueError, match="category ids not in"):
        COCOEvaluator(str(testdata / VAL100), [999] + cat_ids[1:], names)
    evaluator = COCOEvaluator(str(testdata / VAL100), cat_ids, names)
    bad = dict(outputs[0], labels=torch.full_like(outputs[0]["labels"], 80))
    with pytest.raises(ValueError, match="labels .80. outside 0..79"):
        evaluator.process(samples[:1], [bad])


def test_build_evaluator_picks_by_evaluator_type(testdata):
    class CocoLike:
        evaluator_type = "coco"
        ann_file = str(testdata / "detectron2/d2_fast_eval_gt.json")
        label_to_category_id = [1, 65]
        class_names = ["person", "bed"]

    class VocLike:
        evaluator_type = "voc"
        records = []
        class_names = ["a"]

    assert isinstance(build_evaluator(CocoLike(), engine="pycocotools"), COCOEvaluator)
    assert type(build_evaluator(VocLike(), use_07_metric=True)).__name__ == "VOCEvaluator"
    VocLike.evaluator_type = "lvis"
    with pytest.raises(ValueError, match="accepted: \\['coco', 'voc'\\]"):
        build_evaluator(VocLike())
