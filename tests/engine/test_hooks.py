"""The trainer's parts as hooks: the order they run in, and that an iteration's checkpoint is on disk
before its evaluation runs (a failing evaluation loses no training; --resume runs it again)."""

import json

import pytest
import torch

from detkit.checkpoint import load_checkpoint
from detkit.engine import Trainer, train_main
from detkit.engine.distributed import DistContext
from detkit.engine.hooks import Hook, default_hooks
from tests.engine.helpers import load_weights, tiny_config


def fail_evaluation(monkeypatch, when):
    """Make ``Trainer.evaluate`` raise where ``when(iteration, final)`` is true."""
    original = Trainer.evaluate

    def evaluate(trainer, iteration, final=False):
        if when(iteration, final):
            raise RuntimeError(f"evaluation failed at iteration {iteration}")
        return original(trainer, iteration, final=final)

    monkeypatch.setattr(Trainer, "evaluate", evaluate)


def test_a_failing_evaluation_finds_its_checkpoint_written(data_root, tmp_path, monkeypatch):
    cfg = tiny_config(data_root, ["solver.eval_period=2", "solver.checkpoint_period=2"])
    out = tmp_path / "run"
    fail_evaluation(monkeypatch, lambda it, final: it == 4)
    with pytest.raises(RuntimeError, match="evaluation failed at iteration 4"):
        train_main(cfg, output_dir=str(out))
    monkeypatch.undo()
    state = load_checkpoint(out / "last.pth")
    assert state["iteration"] == 4 and (out / "model_0000004.pth").exists()
    assert [r["iteration"] for r in state["eval_history"]] == [2]

    # --resume evaluates iteration 4 first, then trains 5..6 and evaluates at the end
    train_main(cfg, output_dir=str(out), resume=True)
    assert "--resume: evaluating iteration 4 first" in (out / "log.txt").read_text()
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [r["iteration"] for r in history] == [2, 4, 6]


def test_a_failing_final_evaluation_is_finished_by_resume(data_root, tmp_path, monkeypatch):
    cfg = tiny_config(data_root, ["solver.max_iter=3", "solver.steps=[2]"])
    out = tmp_path / "run"
    fail_evaluation(monkeypatch, lambda it, final: final)
    with pytest.raises(RuntimeError, match="evaluation failed at iteration 3"):
        train_main(cfg, output_dir=str(out))
    monkeypatch.undo()
    assert load_checkpoint(out / "last.pth")["iteration"] == 3
    assert not (out / "model_final.pth").exists()

    steps = []
    monkeypatch.setattr(Trainer, "run_step", lambda trainer, it, data: steps.append(it))
    metrics = train_main(cfg, output_dir=str(out), resume=True)
    assert steps == [] and "AP" in metrics  # nothing trained again
    final = load_checkpoint(out / "model_final.pth")
    assert final["iteration"] == 3 and final["metrics"]["AP"] == metrics["AP"]
    last = load_weights(out / "last.pth")
    assert all(torch.equal(final["model"][k], last[k]) for k in last)


class Recorder(Hook):
    def __init__(self):
        self.calls = []

    def before_train(self):
        self.calls.append(("before_train", self.trainer.start_iter))

    def after_step(self, iteration):
        self.calls.append(("after_step", iteration))

    def after_eval(self, iteration, seconds):
        assert seconds >= 0
        self.calls.append(("after_eval", iteration))

    def after_train(self):
        self.calls.append(("after_train", self.trainer.max_iter))


def test_hooks_run_at_their_points_in_order(data_root, tmp_path):
    cfg = tiny_config(data_root, ["solver.max_iter=4", "solver.steps=[3]", "solver.eval_period=2"])
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    recorder = Recorder()
    hooks = [recorder] + default_hooks(cfg)
    trainer = Trainer(cfg, str(tmp_path), ctx, hooks=hooks)
    assert trainer.hooks == hooks and all(h.trainer is trainer for h in hooks)
    metrics = trainer.train()
    assert recorder.calls == [
        ("before_train", 0),
        ("after_step", 1),
        ("after_step", 2),
        ("after_eval", 2),  # the evaluation hook runs after this recorder's after_step
        ("after_step", 3),
        ("after_step", 4),
        ("after_train", 4),
    ]
    assert "AP" in metrics and (tmp_path / "model_final.pth").exists()
