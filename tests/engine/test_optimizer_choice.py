"""solver.optimizer reaches the training loop: an AdamW run checkpoints AdamW state with the
configured weight-decay groups (the quick start trains with AdamW)."""

import pytest

from detkit.checkpoint import load_checkpoint
from detkit.engine import train_main
from tests.engine.helpers import tiny_config


def test_adamw_run_checkpoints_adamw_state(data_root, tmp_path):
    out = tmp_path / "adamw"
    overrides = [
        "solver.optimizer=AdamW",
        "solver.base_lr=0.001",
        "solver.weight_decay=0.05",
        "solver.max_iter=2",
        "solver.steps=[1]",
    ]
    train_main(tiny_config(data_root, overrides), output_dir=str(out))
    state = load_checkpoint(out / "last.pth")
    assert state["iteration"] == 2
    groups = state["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert all("betas" in g and "momentum" not in g for g in groups)
    per_param = state["optimizer"]["state"]
    assert per_param and all({"exp_avg", "exp_avg_sq"} <= set(s) for s in per_param.values())
    assert all(float(s["step"]) == pytest.approx(2) for s in per_param.values())
