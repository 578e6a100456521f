"""The training loop on a tiny model: exact resume, corrupt-checkpoint fallback, divergence (and
resuming after it), outputs, resuming a finished run."""

import json
import shutil

import pytest
import torch

from detkit.checkpoint import load_checkpoint
from detkit.engine import Trainer, train_main
from detkit.errors import TrainingError, WriteError
from tests.engine.helpers import load_weights, tiny_config, truncate_file


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def kill_at(monkeypatch, iteration):
    """Make the next run die (as if killed) when it starts ``iteration``."""
    original = Trainer.run_step

    def run_step(self, it, data_iter):
        if it == iteration:
            raise KeyboardInterrupt(f"simulated kill at iteration {it}")
        return original(self, it, data_iter)

    monkeypatch.setattr(Trainer, "run_step", run_step)


@pytest.mark.slow
def test_resume_ends_with_the_same_weights(data_root, tmp_path, monkeypatch):
    cfg = tiny_config(
        data_root, ["data.num_workers=1"]
    )  # a worker process: seeds must not depend on it
    full = tmp_path / "full"
    train_main(cfg, output_dir=str(full))
    expected = load_weights(full / "model_final.pth")

    killed = tmp_path / "killed"
    kill_at(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        train_main(cfg, output_dir=str(killed))
    monkeypatch.undo()
    assert (
        load_checkpoint(killed / "last.pth")["iteration"] == 4
        and not (killed / "model_final.pth").exists()
    )
    # same seed, same config: the same run (compared where both have a checkpoint)
    assert_same_weights(
        load_weights(killed / "model_0000004.pth"), load_weights(full / "model_0000004.pth")
    )
    damaged = tmp_path / "damaged"
    shutil.copytree(killed, damaged)

    train_main(cfg, output_dir=str(killed), resume=True)
    assert_same_weights(load_weights(killed / "model_final.pth"), expected)
    iterations = [
        r["iteration"]
        for r in map(json.loads, (killed / "metrics.jsonl").read_text().splitlines())
        if "total_loss" in r
    ]
    assert iterations == list(range(1, 7))  # the resumed log reads like one run

    # last.pth and model_0000004.pth unreadable: fall back to iteration 2, still the same result
    truncate_file(damaged / "last.pth")
    truncate_file(damaged / "model_0000004.pth")
    train_main(cfg, output_dir=str(damaged), resume=True)
    log = (damaged / "log.txt").read_text()
    assert "falling back" in log and "resumed from" in log and "model_0000002.pth" in log
    assert_same_weights(load_weights(damaged / "model_final.pth"), expected)


def test_outputs_of_a_run(data_root, tmp_path):
    out = tmp_path / "run"
    metrics = train_main(
        tiny_config(
            data_root,
            [
                "solver.accumulate=2",
                "solver.max_iter=3",
                "solver.steps=[2]",
                "solver.eval_period=2",
            ],
        ),
        output_dir=str(out),
    )
    assert {"AP", "AP50", "per_class"} <= set(metrics)
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "metrics.json",
        "log.txt",
        "curves.png",
        "last.pth",
        "model_final.pth",
        "best.pth",
        "inference/coco_results.json",
    ):
        assert (out / name).exists(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "total_loss" in r]
    assert [r["iteration"] for r in train] == [1, 2, 3]
    assert all(r["lr"] > 0 and r["img_per_sec"] > 0 for r in train)
    assert [r["iteration"] for r in records if r.get("split") == "val"] == [2, 3]
    final = json.loads((out / "metrics.json").read_text())
    assert final["final"]["AP"] == metrics["AP"] and len(final["history"]) == 2
    saved = load_checkpoint(out / "model_final.pth")
    assert (
        saved["class_names"] == ["circle", "rectangle"]
        and saved["config"]["solver"]["accumulate"] == 2
    )
    with pytest.raises(WriteError, match="--resume"):
        train_main(tiny_config(data_root), output_dir=str(out))

    # --resume on the finished run: it says so and returns its metrics, evaluating nothing again
    written = (out / "inference" / "coco_results.json").stat().st_mtime_ns
    again = train_main(
        tiny_config(data_root, ["solver.accumulate=2", "solver.max_iter=3", "solver.steps=[2]"]),
        output_dir=str(out),
        resume=True,
    )
    assert again == final["final"]
    assert (out / "inference" / "coco_results.json").stat().st_mtime_ns == written
    assert (
        f"INFO] --resume: the run in {out} is finished (iteration 3 of"
        in (out / "log.txt").read_text()
    )


def test_non_finite_loss_stops_naming_iteration_and_term(data_root, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = Trainer.forward_losses

    def poisoned(self, batch):
        losses = original(self, batch)
        calls["n"] += 1
        if calls["n"] == 3:
            losses["loss_box"] = losses["loss_box"] * float("nan")
        return losses

    monkeypatch.setattr(Trainer, "forward_losses", poisoned)
    out = tmp_path / "diverged"
    with pytest.raises(TrainingError, match=r"non-finite loss at iteration 3: loss_box=nan"):
        train_main(tiny_config(data_root, ["solver.checkpoint_period=1"]), output_dir=str(out))
    assert sorted(p.name for p in out.glob("*.pth")) == [
        "last.pth",
        "model_0000001.pth",
        "model_0000002.pth",
    ]
    assert load_checkpoint(out / "last.pth")["iteration"] == 2


@pytest.mark.slow
def test_non_finite_update_writes_nothing_and_the_advice_resumes(data_root, tmp_path, monkeypatch):
    """Iteration 3's loss is finite but its gradient is NaN: the run stops at iteration 3 before
    any file sees the weights, and the resume command it prints continues from iteration 2."""
    original = Trainer.forward_losses

    def nan_gradient(self, batch):
        losses = original(self, batch)
        if self.scheduler.last_iter == 2:  # iteration 3
            w = self.model.backbone.conv1.weight
            losses["loss_box"] = losses["loss_box"] + torch.sqrt((w * 0).sum())  # 0, grad NaN
        return losses

    monkeypatch.setattr(Trainer, "forward_losses", nan_gradient)
    out = tmp_path / "run"
    short = ["solver.checkpoint_period=1", "solver.max_iter=4", "solver.steps=[3]"]
    with pytest.raises(TrainingError) as info:  # --resume into an empty folder: a warning
        train_main(tiny_config(data_root, short), str(out), resume=True)
    monkeypatch.undo()
    message = str(info.value)
    assert message.startswith(
        "non-finite weights after the update of iteration 3 (its loss was finite): "
        "1 tensor(s), e.g. ['backbone.conv1.weight']"
    )
    assert f"{out / 'last.pth'} (iteration 2) has finite weights" in message
    assert f"--output-dir {out} --resume solver.base_lr=0.005" in message
    assert sorted(p.name for p in out.glob("*.pth")) == [
        "last.pth",
        "model_0000001.pth",
        "model_0000002.pth",
    ]
    assert all(
        all(torch.isfinite(t).all() for t in load_weights(p).values()) for p in out.glob("*.pth")
    )
    assert "WARNING] --resume: no checkpoint in" in (out / "log.txt").read_text()

    lower = tiny_config(data_root, short + ["solver.base_lr=0.005"])
    train_main(lower, output_dir=str(out), resume=True)
    log = (out / "log.txt").read_text()
    assert f"resumed from {out / 'last.pth'} (iteration 2, " in log
    assert "continuing at iteration 3 of 4" in log
    final = load_checkpoint(out / "model_final.pth")
    assert final["iteration"] == 4 and final["config"]["solver"]["base_lr"] == 0.005
    assert all(torch.isfinite(t).all() for t in final["model"].values())


@pytest.mark.slow
def test_evaluation_runs_the_inference_tools_test_runs(data_root, tmp_path, monkeypatch):
    """best.pth is chosen by the predictor tools/test.py builds (here multi-scale + flip testing),
    not by the bare model."""
    import detkit.engine.trainer as trainer_module
    from detkit.inference.parallel import ParallelImages, resolve_parallel_images
    from detkit.modeling.tta import MultiScaleFlip

    predictors, batches = [], []
    real = trainer_module.run_inference

    def spy(model, loader, evaluator, **kw):
        predictors.append(model)
        batches.append(loader.batch_sampler.batch_size)
        return real(model, loader, evaluator, **kw)

    monkeypatch.setattr(trainer_module, "run_inference", spy)
    cfg = tiny_config(
        data_root,
        ["solver.max_iter=1", "solver.steps=[1]", "test.scales=[48,64]", "test.flip=true"],
    )
    metrics = train_main(cfg, output_dir=str(tmp_path / "run"))
    (predictor,) = predictors
    images = resolve_parallel_images(cfg, torch.device("cpu"))
    if images > 1:  # on the CPU, as tools/test.py: images side by side, batches of that many
        assert isinstance(predictor, ParallelImages) and batches == [images]
        predictor = predictor.predictor
    assert isinstance(predictor, MultiScaleFlip)
    assert predictor.scales == [48, 64] and predictor.flip
    assert "AP" in metrics and (tmp_path / "run" / "best.pth").exists()


class FakeClock:
    """Every training iteration takes exactly one (fake) second, or ``seconds(iteration)``."""

    def __init__(self, monkeypatch, seconds=lambda it: 1.0):
        self.now = 0.0
        original = Trainer.run_step

        def run_step(trainer, it, data_iter):
            values = original(trainer, it, data_iter)
            self.now += seconds(it)
            return values

        monkeypatch.setattr(Trainer, "run_step", run_step)
        monkeypatch.setattr(Trainer, "clock", staticmethod(lambda: self.now))


def budget_config(data_root, monkeypatch, seconds: float, *extra: str):
    """40 cosine iterations under a budget of ``seconds``, measured after iterations 3 and 6."""
    import detkit.engine.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "BUDGET_MEASURE_ITERS", (3, 6))
    budget = [
        "solver.max_iter=40",
        "solver.lr_schedule=cosine",
        "solver.checkpoint_period=100",
        f"solver.max_time_minutes={seconds / 60}",
    ]
    return tiny_config(data_root, budget + list(extra))


def test_time_budget_measured_again_at_the_steady_speed(data_root, tmp_path, monkeypatch):
    cfg = budget_config(data_root, monkeypatch, 20.5)
    out = tmp_path / "run"
    # a slow start (2 s per iteration up to 3), then 1 s: the first estimate (iterations 2..3)
    # leaves 14.5 s -> 3 + 7 = 10 iterations; measured again over 4..6 (1 s each) after 9 s spent:
    # 6 + 11 = 17
    FakeClock(monkeypatch, seconds=lambda it: 2.0 if it <= 3 else 1.0)
    train_main(cfg, output_dir=str(out))
    log = (out / "log.txt").read_text()
    assert "max_iter 40 -> 10 (2.000 s per iteration over iterations 2..3;" in log
    assert "max_iter 10 -> 17 (1.000 s per iteration over iterations 4..6;" in log
    final = json.loads((out / "metrics.json").read_text())
    assert final["iteration"] == 17 and final["time_budget"]["stage"] == 2
    state = load_checkpoint(out / "last.pth")
    assert state["scheduler"]["max_iter"] == 17


def test_time_budget_counts_the_evaluations(data_root, tmp_path, monkeypatch):
    cfg = budget_config(data_root, monkeypatch, 30.5, "solver.eval_period=5")
    out = tmp_path / "run"
    clock = FakeClock(monkeypatch)  # 1 s per iteration; every evaluation takes 4 s
    evaluate = Trainer.evaluate

    def slow_evaluate(trainer, iteration, final=False):
        clock.now += 4.0
        return evaluate(trainer, iteration, final=final)

    monkeypatch.setattr(Trainer, "evaluate", slow_evaluate)
    train_main(cfg, output_dir=str(out))
    log = (out / "log.txt").read_text()
    # iteration 3: 30 iterations fit (no evaluation timed yet); after the one at 5 (4 s): 9 s spent,
    # and 15 = 9 + 10 iterations + the evaluation at 10 + the final one (27 s) fits, 16 does not
    assert "max_iter 40 -> 30 (1.000 s per iteration over iterations 2..3;" in log
    assert "max_iter 30 -> 15 (4.0 s per evaluation;" in log
    final = json.loads((out / "metrics.json").read_text())
    assert final["iteration"] == 15
    assert final["time_budget"]["evals"] == 2 and final["time_budget"]["eval_seconds"] == 8.0
    assert clock.now <= 30.5  # training and every evaluation, the final one included


def test_time_budget_counts_building_the_datasets(data_root, tmp_path, monkeypatch):
    import detkit.engine.trainer as trainer_module

    cfg = budget_config(data_root, monkeypatch, 20.5)
    clock = FakeClock(monkeypatch)  # 1 s per iteration; building the training set takes 5 s
    build = trainer_module.build_dataset_main_first

    def slow_build(cfg, split, ctx):
        clock.now += 5.0 if split == "train" else 0.0
        return build(cfg, split, ctx)

    monkeypatch.setattr(trainer_module, "build_dataset_main_first", slow_build)
    out = tmp_path / "run"
    train_main(cfg, output_dir=str(out))
    # iteration 3: 3 s of training + 5 s of setup spent, 12 more iterations fit -> 15 (20 without
    # the setup counted)
    assert (
        "max_iter 40 -> 15 (1.000 s per iteration over iterations 2..3;"
        in (out / "log.txt").read_text()
    )
    final = json.loads((out / "metrics.json").read_text())
    assert final["iteration"] == 15 and final["time_budget"]["setup_seconds"] == 5.0


def test_a_tiny_time_budget_stops_with_the_final_files(data_root, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(data_root, ["solver.max_iter=50", "solver.max_time_minutes=1e-6"])
    metrics = train_main(cfg, output_dir=str(out))
    assert "AP" in metrics
    for name in ("model_final.pth", "metrics.json", "curves.png", "last.pth"):
        assert (out / name).exists(), name
    final = json.loads((out / "metrics.json").read_text())
    assert final["iteration"] == 1 and final["time_budget"]["max_iter"] == 1
    assert load_checkpoint(out / "model_final.pth")["iteration"] == 1
    assert "solver.max_time_minutes=1e-06: max_iter 50 -> 1 (" in (out / "log.txt").read_text()


def test_time_budget_becomes_max_iter_and_resume_keeps_it(data_root, tmp_path, monkeypatch):
    import detkit.engine.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "BUDGET_MEASURE_ITERS", (3, 6))
    budget = [
        "solver.max_iter=40",
        "solver.steps=[20, 30]",
        "solver.checkpoint_period=3",
        f"solver.max_time_minutes={10.5 / 60}",  # 10.5 fake seconds: 10 iterations of 1 s
    ]
    cfg = tiny_config(data_root, budget)
    full = tmp_path / "full"
    FakeClock(monkeypatch)
    train_main(cfg, output_dir=str(full))
    state = load_checkpoint(full / "last.pth")
    # measured over iterations 2..3 (1 s each): 3 + 7 more fit; steps 20, 30 of 40 -> 5, 8 of 10;
    # measured again over 4..6: the same speed, max_iter kept
    assert state["iteration"] == 10 and state["time_budget"]["max_iter"] == 10
    schedule = state["scheduler"]
    assert schedule["max_iter"] == 10
    records = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "total_loss" in r]
    assert train[-1]["iteration"] == 10
    assert train[-1]["lr"] == pytest.approx(0.01 * 0.1**2)  # the final lr of the rescaled steps
    assert json.loads((full / "metrics.json").read_text())["iteration"] == 10

    # --resume of the finished run trains nothing more
    monkeypatch.undo()
    monkeypatch.setattr(trainer_module, "BUDGET_MEASURE_ITERS", (3, 6))
    calls = []
    monkeypatch.setattr(Trainer, "run_step", lambda *a: calls.append(a[1]))
    train_main(cfg, output_dir=str(full), resume=True)
    assert calls == []

    # killed after the budget was applied: the resumed run ends at the same iteration
    monkeypatch.undo()
    monkeypatch.setattr(trainer_module, "BUDGET_MEASURE_ITERS", (3, 6))
    killed = tmp_path / "killed"
    kill_at(monkeypatch, 8)
    FakeClock(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train_main(cfg, output_dir=str(killed))
    assert load_checkpoint(killed / "last.pth")["iteration"] == 6
    monkeypatch.undo()
    clock = FakeClock(monkeypatch)
    clock.now = 100.0  # any offset: only the training time stored in the checkpoint counts
    train_main(cfg, output_dir=str(killed), resume=True)
    assert load_checkpoint(killed / "model_final.pth")["iteration"] == 10
    assert_same_weights(
        load_weights(killed / "model_final.pth"), load_weights(full / "model_final.pth")
    )
