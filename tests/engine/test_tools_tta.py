"""tools/test.py with multi-scale + flip testing and box refinement switched on from the command line."""

import json

import pytest

from tests.engine.helpers import run_tool, tiny_config


@pytest.mark.slow
def test_tools_test_with_multiscale_flip_and_refinement(data_root, tmp_path):
    cfg_file = tmp_path / "tiny.yaml"
    tiny_config(data_root, ["solver.max_iter=2", "solver.steps=[1]"]).dump(cfg_file)
    out = tmp_path / "run"
    train = run_tool(["tools/train.py", str(cfg_file), "--output-dir", str(out)])
    assert train.returncode == 0, train.stderr[-4000:]
    test = run_tool(
        [
            "tools/test.py",
            str(cfg_file),
            "--weights",
            str(out / "model_final.pth"),
            "--output-dir",
            str(out / "tta"),
            "test.scales=[48,64]",
            "test.flip=true",
            "test.merge=vote",
            "model.roi_heads.refine_iterations=1",
            "model.roi_heads.score_thresh_test=0.0",
        ]
    )
    assert test.returncode == 0, test.stderr[-4000:]
    log = (out / "tta" / "log.txt").read_text()
    assert "test-time augmentation: scales [48, 64], flip True, merge vote" in log
    metrics = json.loads((out / "tta" / "metrics.json").read_text())
    assert 0.0 <= metrics["AP"] <= 1.0
    results = json.loads((out / "tta" / "coco_results.json").read_text())
    assert results and all(r["bbox"][2] >= 0 and r["bbox"][3] >= 0 for r in results)
