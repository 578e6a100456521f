"""tools/evaluate.py and tools/benchmark_eval.py end to end, as users run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from reference_cases import (
    CASE_FOLDERS,
    EXPECTED_11PT,
    FAKE_BBOX,
    VAL100,
    VAL100_STATS,
    devkit_box,
    read_case,
    write_devkit,
)
from synthetic_coco import COCO_STATS

from detkit.evaluation import VOC_CLASSES

ROOT = Path(__file__).resolve().parents[2]


def run_tool(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {
        k: v for k, v in os.environ.items() if k != "PYTHONPATH"
    }  # the tool must find detkit itself
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / script), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("engine", ["fast", "pycocotools"])
def test_evaluate_coco_files(testdata, tmp_path, engine):
    out = tmp_path / "m.json"
    proc = run_tool(
        "evaluate.py",
        "--gt",
        testdata / VAL100,
        "--results",
        testdata / FAKE_BBOX,
        "--out",
        out,
        "--engine",
        engine,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(out.read_text())
    assert list(metrics) == [*COCO_STATS, "per_class"]
    assert [metrics[k] for k in COCO_STATS] == pytest.approx(VAL100_STATS, abs=1e-9)
    assert "AP50" in proc.stderr and "toothbrush" in proc.stderr  # the tables are logged


def test_evaluate_voc_files(testdata, tmp_path):
    gts, dets = read_case(testdata / CASE_FOLDERS[0][0], *CASE_FOLDERS[0][1:])
    root = write_devkit(
        tmp_path / "VOC2007", {k: [devkit_box(b) for b in v] for k, v in gts.items()}
    )
    results = tmp_path / "res"
    results.mkdir()
    lines = [f"{i} {s} {' '.join(f'{v:g}' for v in devkit_box(b))}\n" for i, s, b in dets]
    (results / "comp4_det_test_person.txt").write_text("".join(lines))
    for name in VOC_CLASSES:  # the CLI evaluates the 20 VOC classes: the others get empty files
        (results / f"comp4_det_test_{name}.txt").touch(exist_ok=True)
    proc = run_tool(
        "evaluate.py",
        "--voc",
        root,
        "--split",
        "test",
        "--results",
        results,
        "--use-07-metric",
        "--iou",
        "0.3",
        "--out",
        tmp_path / "voc.json",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "voc.json").read_text())
    assert metrics["mAP"] == pytest.approx(EXPECTED_11PT[0.3], abs=1e-9)  # other classes: no GT
    assert metrics["per_class"]["dog"] == -1.0 and "no (non-difficult) ground truth" in proc.stderr


def test_evaluate_names_missing_files(testdata, tmp_path):
    proc = run_tool(
        "evaluate.py", "--gt", testdata / VAL100, "--results", tmp_path / "dets.json", cwd=tmp_path
    )
    assert proc.returncode == 2 and "dets.json" in proc.stderr
    proc = run_tool(
        "evaluate.py", "--voc", tmp_path / "VOC2007", "--results", tmp_path, cwd=tmp_path
    )
    assert proc.returncode == 2 and "ImageSets/Main/test.txt" in proc.stderr
    assert not (tmp_path / "metrics.json").exists()


def test_benchmark_runs_and_engines_agree(tmp_path):
    proc = run_tool(
        "benchmark_eval.py", "--images", "40", "--dets", "20", "--classes", "5", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "speed-up" in proc.stderr and "pycocotools" in proc.stderr
