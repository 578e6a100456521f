"""Where evaluations write: tools/test.py next to the weights (or --output-dir), its --analyze report,
the trainer's error analysis of its final evaluation (a failure of which keeps the model), and the
VOC-style path (ground truth and detections built from dataset records)."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from detkit.analysis.from_records import (
    detections_from_results,
    ground_truth_from_records,
    records_image_paths,
)
from detkit.data.synthetic import generate_synthetic
from detkit.engine import train_main
from detkit.engine.launch import default_test_dir
from detkit.engine.trainer import RecordingEvaluator
from detkit.modeling import build_model
from detkit.utils.io import atomic_save
from tests.engine.helpers import load_tool, tiny_config
from tests.helpers import error_lines

CLASSES = ["circle", "rectangle"]
FAST_EVAL = ["test.parallel_images=1", "test.ims_per_batch=2"]


def save_weights(cfg, path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = build_model(cfg, CLASSES)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({"model": model.state_dict(), "config": cfg.to_dict()}, path)
    return path


@pytest.fixture(scope="module")
def setup(data_root, tmp_path_factory):
    """A config file (its output_dir in a folder of its own) and two weights files in one folder."""
    tmp = tmp_path_factory.mktemp("analysis_outputs")
    cfg = tiny_config(data_root, [f"output_dir={tmp / 'cfg_output'}", *FAST_EVAL])
    cfg_file = tmp / "tiny.yaml"
    cfg.dump(cfg_file)
    weights = [
        save_weights(cfg, tmp / "run" / f"model_{n}.pth", seed) for n, seed in (("a", 0), ("b", 1))
    ]
    return cfg, cfg_file, weights


def test_default_test_dir_is_next_to_the_weights(tmp_path):
    weights = tmp_path / "run" / "model_final.pth"
    assert default_test_dir(str(weights)) == tmp_path / "run" / "test_model_final"
    assert default_test_dir(str(weights), "onnxruntime") == (
        tmp_path / "run" / "test_model_final_onnxruntime"
    )


def test_results_go_next_to_each_weights_file(setup):
    cfg, cfg_file, (a, b) = setup
    test = load_tool("test")
    assert test.main([str(cfg_file), "--weights", str(a)]) == 0
    out_a = a.parent / "test_model_a"
    files = {n: (out_a / n).read_bytes() for n in ("coco_results.json", "metrics.json")}
    assert "results go to " + str(out_a) in (out_a / "log.txt").read_text()
    assert test.main([str(cfg_file), "--weights", str(b)]) == 0
    out_b = b.parent / "test_model_b"
    assert json.loads((out_b / "metrics.json").read_text())["per_class"].keys() == set(CLASSES)
    # the second weights file did not overwrite the first one's results
    assert {n: (out_a / n).read_bytes() for n in files} == files
    assert (out_b / "coco_results.json").read_bytes() != files["coco_results.json"]
    assert not (out_a / "analysis").exists()  # only with --analyze
    assert not Path(cfg.output_dir).exists()  # nothing under <output_dir>/test any more


def test_output_dir_and_analyze(setup, tmp_path):
    _, cfg_file, (a, _) = setup
    out = tmp_path / "elsewhere"
    args = [str(cfg_file), "--weights", str(a), "--output-dir", str(out), "--analyze"]
    options = ["--analyze-iou", "0.4", "--analyze-score-thresh", "0.25"]
    assert load_tool("test").main(args + options) == 0
    assert (out / "metrics.json").is_file() and (out / "coco_results.json").is_file()
    assert (out / "analysis" / "report.html").is_file()
    analysis = json.loads((out / "analysis" / "analysis.json").read_text())
    settings = analysis["settings"]
    assert settings["rules"] == "coco" and settings["iou_thresh"] == 0.4
    assert settings["score_thresh"] == 0.25
    assert settings["n_images"] == 6  # the processed images
    assert not any("no galleries" in n for n in analysis["notes"])  # the dataset's image files
    # the analysis' numbers are the evaluation's
    metrics = json.loads((out / "metrics.json").read_text())
    assert analysis["metrics"]["AP"] == pytest.approx(metrics["AP"], abs=1e-9)


def test_analyze_options_need_analyze_and_valid_values(setup, tmp_path, capsys):
    _, cfg_file, (a, _) = setup
    args = [str(cfg_file), "--weights", str(a), "--output-dir", str(tmp_path / "o")]
    with pytest.raises(SystemExit):
        load_tool("test").main(args + ["--analyze-iou", "0.4"])
    assert "--analyze" in capsys.readouterr().err
    status = load_tool("test").main(args + ["--analyze", "--analyze-score-thresh", "1.5"])
    assert status == 1 and "--analyze-score-thresh" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_a_weights_folder_that_cannot_hold_the_results_names_output_dir(setup, tmp_path, capsys):
    _, cfg_file, (a, _) = setup
    weights = tmp_path / "w.pth"
    weights.write_bytes(a.read_bytes())
    (tmp_path / "test_w").write_text("a file where the results folder would go")
    assert load_tool("test").main([str(cfg_file), "--weights", str(weights)]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert f"WriteError: cannot write to the output folder {tmp_path / 'test_w'}" in line
    assert "pass --output-dir" in line


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    """6 synthetic images with VOC XML files (VOC20xx layout, split 'val')."""
    folder = tmp_path_factory.mktemp("voc") / "VOC2007"
    generate_synthetic(folder, 6, 2, (64, 80), seed=3, split="val", write_voc=True)
    return folder


def test_voc_style_dataset_analysis(setup, voc_root, tmp_path):
    cfg, _, (a, _) = setup
    voc = (
        f"data.test.datasets=[{{name: VOCDataset, root: {voc_root}, split: val, "
        f"class_names: [{', '.join(CLASSES)}]}}]"
    )
    cfg_file = tmp_path / "voc.yaml"
    tiny_config(voc_root, [voc, *FAST_EVAL]).dump(cfg_file)
    out = tmp_path / "voc_test"
    args = [str(cfg_file), "--weights", str(a), "--output-dir", str(out), "--analyze"]
    assert load_tool("test").main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results and {r["category_id"] for r in results} <= {1, 2}
    analysis = json.loads((out / "analysis" / "analysis.json").read_text())
    assert analysis["settings"]["rules"] == "voc" and analysis["settings"]["n_images"] == 6
    assert (out / "analysis" / "report.html").is_file()


def test_ground_truth_from_records():
    records = [
        {
            "image_id": 7,
            "file_name": "/data/a.jpg",
            "height": 50,
            "width": 60,
            "boxes": np.array([[0, 0, 10, 20], [5, 5, 15, 10]], np.float32),
            "labels": np.array([1, 0], np.int64),
            "difficult": np.array([False, True]),
        },
        {
            "image_id": 9,
            "file_name": "/data/b.jpg",
            "height": 40,
            "width": 40,
            "boxes": np.zeros((0, 4), np.float32),
            "labels": np.zeros(0, np.int64),
            "difficult": np.zeros(0, bool),
        },
    ]
    gt = ground_truth_from_records(records, ["cat", "dog"])
    assert gt.image_ids.tolist() == [7, 9] and gt.cat_ids.tolist() == [1, 2]
    assert gt.cat_names == {1: "cat", 2: "dog"}
    assert gt.ann_image_id.tolist() == [7, 7] and gt.ann_category_id.tolist() == [2, 1]
    assert gt.ann_bbox.tolist() == [[0, 0, 10, 20], [5, 5, 10, 5]]  # XYWH, w = x2 - x1
    assert gt.ann_area.tolist() == [200, 50]
    assert gt.ann_crowd.tolist() == [False, False]
    assert gt.ann_ignore.tolist() == [False, True]  # difficult
    assert records_image_paths(records, [9]) == {9: "/data/b.jpg"}
    with pytest.raises(ValueError, match=r"labels \[1\] outside 0..0"):
        ground_truth_from_records(records, ["cat"])


def test_detections_from_recorded_results():
    class Null:
        def reset(self):
            pass

        def process(self, samples, outputs):
            pass

    recorder = RecordingEvaluator(Null())
    recorder.reset()
    outputs = {
        "boxes": torch.tensor([[1.0, 2.0, 11.0, 7.0]]),
        "scores": torch.tensor([0.5]),
        "labels": torch.tensor([1]),
    }
    recorder.process([{"image_id": 3}], [outputs])
    assert recorder.gather() == ([3], recorder.results)
    dets = detections_from_results(recorder.results)
    assert dets.image_id.tolist() == [3] and dets.category_id.tolist() == [2]
    assert dets.bbox.tolist() == [[1, 2, 10, 5]] and dets.score.tolist() == [0.5]


TRAIN = ["solver.max_iter=2", "solver.steps=[1]", "solver.warmup_iters=1", *FAST_EVAL]


def test_training_writes_the_final_analysis(data_root, tmp_path):
    out = tmp_path / "run"
    train_main(tiny_config(data_root, TRAIN), output_dir=str(out))
    assert (out / "model_final.pth").is_file() and (out / "metrics.json").is_file()
    assert (out / "analysis" / "report.html").is_file()
    analysis = json.loads((out / "analysis" / "analysis.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert analysis["settings"]["n_images"] == 6
    assert analysis["metrics"]["AP"] == pytest.approx(metrics["final"]["AP"], abs=1e-9)


def test_a_failing_analysis_keeps_the_trained_model(data_root, tmp_path, monkeypatch, detkit_log):
    import detkit.engine.hooks as hooks

    def broken(*args, **kwargs):
        raise RuntimeError("simulated analysis bug")

    monkeypatch.setattr(hooks, "analyze_dataset", broken)
    out = tmp_path / "run"
    metrics = train_main(tiny_config(data_root, TRAIN), output_dir=str(out))
    assert "AP" in metrics
    assert (out / "model_final.pth").is_file() and (out / "metrics.json").is_file()
    assert not (out / "analysis").exists()
    errors = [r for r in detkit_log.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "simulated analysis bug" in errors[0].getMessage()
    assert "model_final.pth" in errors[0].getMessage()


def test_analyze_false_skips_the_analysis(data_root, tmp_path, monkeypatch):
    import detkit.engine.hooks as hooks

    monkeypatch.setattr(hooks, "analyze_dataset", None)  # would fail if called
    out = tmp_path / "run"
    train_main(tiny_config(data_root, TRAIN + ["test.analyze=false"]), output_dir=str(out))
    assert (out / "model_final.pth").is_file() and not (out / "analysis").exists()
