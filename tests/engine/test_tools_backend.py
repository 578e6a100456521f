"""tools/test.py --backend: the onnxruntime backend evaluates to the eager backend's metrics, and a
backend that cannot run the config is one error line before the dataset is built."""

import json

import pytest
import torch

from detkit.modeling import build_model
from detkit.utils.io import atomic_save
from tests.engine.helpers import load_tool, tiny_config
from tests.helpers import error_lines

# every detection kept: the metrics then compare hundreds of boxes, not a handful above 0.05
KEEP_ALL = ["model.roi_heads.score_thresh_test=0.0"]


@pytest.fixture
def tiny_run(data_root, tmp_path):
    """A config file and a checkpoint of the tiny model (seeded random weights)."""
    cfg = tiny_config(data_root, KEEP_ALL)
    cfg_file = tmp_path / "tiny.yaml"
    cfg.dump(cfg_file)
    torch.manual_seed(0)
    model = build_model(cfg, ["circle", "rectangle"])
    weights = tmp_path / "model.pth"
    atomic_save({"model": model.state_dict(), "config": cfg.to_dict()}, weights)
    return cfg_file, weights


def matched(results: list, others: list) -> float:
    """The fraction of COCO results with a twin in ``others``: same image and category, box within
    1e-3 px, score within 1e-4."""
    by_key = {}
    for r in others:
        by_key.setdefault((r["image_id"], r["category_id"]), []).append(r)

    def twin(r) -> bool:
        return any(
            max(abs(a - b) for a, b in zip(r["bbox"], o["bbox"])) <= 1e-3
            and abs(r["score"] - o["score"]) <= 1e-4
            for o in by_key.get((r["image_id"], r["category_id"]), [])
        )

    return sum(twin(r) for r in results) / len(results)


def test_onnxruntime_backend_gives_the_eager_metrics(tiny_run, tmp_path):
    pytest.importorskip("onnxruntime")
    cfg_file, weights = tiny_run
    test = load_tool("test")
    metrics, logs = {}, {}
    for backend in ("eager", "onnxruntime"):
        out = tmp_path / backend
        args = [str(cfg_file), "--weights", str(weights), "--output-dir", str(out)]
        assert test.main(args + ["--backend", backend]) == 0
        metrics[backend] = json.loads((out / "metrics.json").read_text())
        logs[backend] = (out / "log.txt").read_text()
    eager, ort = metrics["eager"], metrics["onnxruntime"]
    assert set(ort) == set(eager)  # metrics.json keeps its form
    for key in ("AP", "AP50", "AP75", "AR100"):
        assert ort[key] == pytest.approx(eager[key], abs=1e-3), key
    # random weights score low: the detections themselves are the sharp comparison
    results = {b: json.loads((tmp_path / b / "coco_results.json").read_text()) for b in metrics}
    assert len(results["eager"]) > 100
    assert matched(results["eager"], results["onnxruntime"]) >= 0.99
    assert matched(results["onnxruntime"], results["eager"]) >= 0.99
    graphs = list(weights.parent.glob("model.pth.*.onnx"))  # cached next to the weights
    assert len(graphs) == 1
    assert f"backend: onnxruntime (graph {graphs[0]})" in logs["onnxruntime"]
    assert "backend: eager; test precision: fp32" in logs["eager"]


@pytest.mark.parametrize(
    "backend, extra, message",
    [
        (
            "bogus",
            [],
            "BackendError: unknown backend 'bogus' (backend= / --backend); valid: eager, onnxruntime",
        ),
        ("onnxruntime", ["test.flip=true"], "test.flip=true (flip testing"),
    ],
)
def test_unusable_backend_is_one_line_before_the_dataset(
    tmp_path, tiny_run, capsys, backend, extra, message
):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    cfg_file, weights = tiny_run
    # a dataset that does not exist: the backend's error must come first
    missing = tmp_path / "nowhere"
    args = [
        str(cfg_file),
        f"data.test.datasets=[{{name: SyntheticDataset, root: {missing}, split: val, "
        "num_images: 6, num_classes: 2, image_size: [64, 80], seed: 3}]",
        *extra,
        "--weights",
        str(weights),
        "--output-dir",
        str(tmp_path / "out"),
        "--backend",
        backend,
    ]
    assert load_tool("test").main(args) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert message in line
    assert not missing.exists()  # the synthetic test set was never generated


def test_test_tool_batches_images_side_by_side_when_unset(tiny_run, tmp_path):
    """tools/test.py on the CPU: with test.ims_per_batch left unset, batches of as many images as
    test.parallel_images runs side by side; the same metrics as one image at a time."""
    import yaml

    cfg_file, weights = tiny_run
    raw = yaml.safe_load(cfg_file.read_text())
    del raw["test"]["ims_per_batch"]  # as in configs/*.yaml: left to defaults.yaml
    unset = tmp_path / "unset.yaml"
    unset.write_text(yaml.safe_dump(raw))
    test = load_tool("test")
    metrics, logs = {}, {}
    for name, extra in (("side_by_side", []), ("one_at_a_time", ["test.ims_per_batch=1"])):
        out = tmp_path / name
        args = [str(unset), "test.parallel_images=2", *extra, "--weights", str(weights)]
        assert test.main(args + ["--output-dir", str(out)]) == 0
        metrics[name] = json.loads((out / "metrics.json").read_text())
        logs[name] = (out / "log.txt").read_text()
    assert "test.ims_per_batch=2: that many images side by side" in logs["side_by_side"]
    assert "images side by side" not in logs["one_at_a_time"]  # set: kept
    for key in ("AP", "AP50", "AP75", "AR100"):
        assert metrics["side_by_side"][key] == pytest.approx(
            metrics["one_at_a_time"][key], abs=1e-6
        )
