"""Mixed precision needs CUDA: these run on a GPU machine and are skipped, visibly, elsewhere."""

import json

import pytest
import torch

from detkit.engine import train_main
from tests.engine.helpers import tiny_config

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_amp_training_runs_and_logs_gpu_memory(data_root, tmp_path, dtype):
    out = tmp_path / dtype
    cfg = tiny_config(
        data_root,
        [
            "solver.amp=true",
            f"solver.amp_dtype={dtype}",
            "solver.max_iter=3",
            "solver.steps=[2]",
            "solver.clip_grad_norm=5.0",
        ],
    )
    train_main(cfg, output_dir=str(out))
    state = torch.load(out / "last.pth", map_location="cpu", weights_only=False)
    assert state["iteration"] == 3
    if dtype == "fp16":  # fp16 trains through a gradient scaler, bf16 without one
        assert state["scaler"]["scale"] > 0
    else:
        assert state["scaler"] == {}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["max_mem_mb"] > 0 for r in records if "total_loss" in r)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_amp_is_ignored_with_a_warning_on_cpu(data_root, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "cpu_amp"
    train_main(
        tiny_config(
            data_root,
            ["solver.amp=true", "solver.max_iter=1", "solver.steps=[1]", "solver.warmup_iters=0"],
        ),
        output_dir=str(out),
    )
    assert "solver.amp is ignored on CPU" in (out / "log.txt").read_text()
