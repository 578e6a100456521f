"""tools/analyze.py end to end on the real val2014 files: the report's numbers reconcile with
detkit's evaluator (and so with pycocotools), every analysis.json key the issue names is there, and
bad inputs give a report or a one-line error, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detkit.analysis.run import analyze
from detkit.evaluation import evaluate_coco_results
from tests.helpers import ROOT, error_lines, reference_data, write_jpeg

TIDE_MAIN = {"Cls", "Loc", "Both", "Dupe", "Bkg", "Miss"}


def _files():
    gt = reference_data(
        "faster_coco_eval", "tests", "dataset", "cocoapi", "instances_val2014_100.json"
    )
    res = reference_data("cocoapi", "results", "instances_val2014_fakebbox100_results.json")
    return gt, res


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "analyze.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    gt, res = _files()
    tmp = tmp_path_factory.mktemp("analysis")
    data = json.loads(gt.read_text())
    images = tmp / "images"
    for n, im in enumerate(data["images"][:30]):  # galleries draw what exists, skip the rest
        write_jpeg(images / im["file_name"], im["width"], im["height"], seed=n)
    out = tmp / "out"
    proc = run_tool(
        "--gt", str(gt), "--results", str(res), "--output-dir", str(out), "--images", str(images)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "analysis.json").read_text()), gt, res


def test_report_files_and_keys(report):
    out, a, _, _ = report
    for name in ("report.html", "analysis.json", "thresholds.json"):
        assert (out / name).is_file(), name
    assert list(out.glob("*.csv")) and list((out / "figures").glob("*.png"))
    assert list((out / "gallery").iterdir())
    assert {"settings", "pr_curves", "coco_breakdown", "tide", "confusion_matrix"} <= set(a)
    assert set(a["pr_curves"]) == {"iou_0.50", "iou_0.75"}
    assert len(a["pr_curves"]["iou_0.50"]["person"]) == 101
    assert set(a["coco_breakdown"]["all"]["small"]) == {
        "C75",
        "C50",
        "Loc",
        "Sim",
        "Oth",
        "BG",
        "FN",
    }
    assert set(a["tide"]["main"]) == TIDE_MAIN and set(a["tide"]["special"]) == {
        "FalsePos",
        "FalseNeg",
    }
    cm = a["confusion_matrix"]
    assert cm["labels"][-1] == "background" and len(cm["counts"]) == len(cm["labels"])
    assert {"score_thresh", "iou_thresh"} <= set(cm)
    assert set(a["operating_points"]["person"]) == {"score", "precision", "recall", "f1"}


def test_numbers_reconcile_with_the_evaluator(report):
    _, a, gt, res = report
    metrics = evaluate_coco_results(str(gt), str(res))
    for key in ("AP", "AP50", "AP75", "APs", "AR100"):
        assert a["metrics"][key] == metrics[key]
    # the overall PR curve's mean is AP50 / AP75 exactly as the evaluator prints them
    assert np.mean(a["pr_curves"]["iou_0.50"]["all"]) == pytest.approx(metrics["AP50"], abs=1e-12)
    assert np.mean(a["pr_curves"]["iou_0.75"]["all"]) == pytest.approx(metrics["AP75"], abs=1e-12)
    assert a["coco_breakdown"]["all"]["all"]["C50"] == pytest.approx(metrics["AP50"], abs=1e-12)
    assert a["coco_breakdown"]["all"]["all"]["C75"] == pytest.approx(metrics["AP75"], abs=1e-12)
    # the default confusion threshold is the pooled best-F1 operating point
    assert a["confusion_matrix"]["score_thresh"] == a["overall_operating_point"]["score"]
    counts = np.array(a["confusion_matrix"]["counts"])
    for k, name in enumerate(a["confusion_matrix"]["labels"][:-1]):
        if counts[:, k].sum():
            assert a["confusion_matrix"]["precision"][name] == counts[k, k] / counts[:, k].sum()


def test_thresholds_file_holds_the_operating_points(report):
    out, a, _, _ = report
    th = json.loads((out / "thresholds.json").read_text())
    for name, op in a["operating_points"].items():
        if op is None:
            assert name in th["no_operating_point"]
        else:
            assert th["thresholds"][name] == op["score"]


def test_compare_two_models(tmp_path):
    gt, res = _files()
    results = json.loads(res.read_text())
    worse = [dict(r, score=r["score"] * 0.5) for r in results if r["category_id"] != 1]
    analysis, _, _ = analyze(str(gt), results, compare=worse)
    c = analysis["compare"]
    assert c["per_class_ap"]["person"]["other"] == 0.0  # no person detections in the other
    assert c["per_class_ap"]["person"]["delta"] == c["per_class_ap"]["person"]["this"] > 0
    assert c["tide_delta"]["Miss"] != 0 and c["images_this_better"]
    assert not c["images_other_better"]


def test_empty_results_give_a_report_that_says_so(tmp_path):
    gt, _ = _files()
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    proc = run_tool("--gt", str(gt), "--results", str(empty), "--output-dir", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = json.loads((tmp_path / "o" / "analysis.json").read_text())
    assert any("no detections" in n for n in a["notes"])
    assert (
        a["metrics"]["AP"] == 0.0
        and "no detections" in (tmp_path / "o" / "report.html").read_text()
    )


def test_unknown_image_id_is_one_line_naming_it(tmp_path):
    gt, res = _files()
    bad = json.loads(res.read_text())
    bad[3]["image_id"] = 999999999
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    proc = run_tool("--gt", str(gt), "--results", str(path), "--output-dir", str(tmp_path / "o"))
    assert proc.returncode == 2
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "999999999" in lines[0] and str(path) in lines[0]


def test_class_without_detections_and_without_ground_truth_are_named(tmp_path):
    gt, res = _files()
    data = json.loads(Path(gt).read_text())
    data["categories"].append({"id": 999, "name": "unicorn", "supercategory": "animal"})
    results = [r for r in json.loads(res.read_text()) if r["category_id"] != 1]
    analysis, _, _ = analyze(data, results)
    notes = " ".join(analysis["notes"])
    assert "unicorn" in notes and "person" in notes
    assert analysis["operating_points"]["unicorn"] is None
    assert analysis["pr_curves"]["iou_0.50"]["unicorn"] == [-1.0] * 101


def test_numbers_do_not_depend_on_building_error_records():
    gt, res = _files()
    with_records, _, tide = analyze(str(gt), str(res))
    without, _, bare = analyze(str(gt), str(res), error_records=False)
    assert with_records == without
    assert tide["errors"] and not bare["errors"] and not bare["true_positives"]
