"""The command-line tools end to end in subprocesses: DDP training + testing with torchrun (2 CPU
processes, gloo), tools/test.py on a converted torchvision checkpoint, clean user errors."""

import json
import re

import pytest
import torch

from tests.engine.helpers import REPO, load_tool, run_tool, tiny_config, tiny_overrides


def images_predicted(log_text: str, desc: str = "test") -> int:
    return sum(int(n) for n in re.findall(rf"{desc}: (\d+) images in", log_text))


@pytest.mark.slow
def test_ddp_two_processes_train_then_test(data_root, tmp_path):
    cfg_file = tmp_path / "tiny.yaml"
    tiny_config(
        data_root, ["solver.max_iter=3", "solver.steps=[2]", "solver.checkpoint_period=2"]
    ).dump(cfg_file)
    out = tmp_path / "ddp"
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    train = run_tool(torchrun + ["tools/train.py", str(cfg_file), "--output-dir", str(out)])
    assert train.returncode == 0, train.stderr[-4000:]
    log = (out / "log.txt").read_text()
    assert "rank 0 of 2" in log and "2 processes x 1 accumulation steps x 1 images" in log
    assert "rank 1 of 2" in (out / "log_rank1.txt").read_text()
    state = torch.load(out / "last.pth", map_location="cpu", weights_only=False)
    assert state["iteration"] == 3 and state["world_size"] == 2 and len(state["rng"]) == 2

    test = run_tool(
        torchrun
        + [
            "tools/test.py",
            str(cfg_file),
            "--weights",
            str(out / "model_final.pth"),
            "--output-dir",
            str(out / "test"),
        ]
    )
    assert test.returncode == 0, test.stderr[-4000:]
    per_rank = [
        images_predicted((out / "test" / name).read_text()) for name in ("log.txt", "log_rank1.txt")
    ]
    assert per_rank == [3, 3]  # 6 images, each predicted once, by one of the two processes
    metrics = json.loads((out / "test" / "metrics.json").read_text())
    assert 0.0 <= metrics["AP"] <= 1.0 and set(metrics["per_class"]) == {"circle", "rectangle"}
    results = json.loads((out / "test" / "coco_results.json").read_text())
    assert {r["image_id"] for r in results} <= set(range(1, 7))


@pytest.mark.slow
def test_tools_test_on_a_converted_torchvision_checkpoint(data_root, tmp_path):
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    from detkit.checkpoint.torchvision_names import torchvision_detector_to_detkit
    from detkit.config import load_config
    from detkit.utils.io import atomic_save

    torch.manual_seed(0)
    tv = fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=3
    )  # 2 classes + background
    overrides = [o for o in tiny_overrides(data_root) if o.startswith(("data.", "input."))]
    overrides += ["model.num_classes=2", "model.backbone.weights=''"]
    cfg = load_config(REPO / "configs" / "frcnn_r50_fpn_coco.yaml", overrides)
    weights = tmp_path / "converted.pth"
    atomic_save(
        {"model": torchvision_detector_to_detkit(tv.state_dict()), "config": cfg.to_dict()}, weights
    )
    out = tmp_path / "tv_test"
    proc = run_tool(
        [
            "tools/test.py",
            "configs/frcnn_r50_fpn_coco.yaml",
            *overrides,
            "--weights",
            str(weights),
            "--output-dir",
            str(out),
        ]
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert images_predicted((out / "log.txt").read_text()) == 6
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"AP", "AP50", "AR100", "per_class"} <= set(metrics)
    assert isinstance(json.loads((out / "coco_results.json").read_text()), list)
    assert "per-category bbox AP" in proc.stderr


def test_missing_dataset_is_one_clear_line(tmp_path, capsys):
    # a tool's main returns its exit status (tools/*.py: tool_main)
    status = load_tool("train").main(
        [
            str(REPO / "configs/frcnn_r50_fpn_coco.yaml"),
            f"data.root={tmp_path / 'nowhere'}",
            "--output-dir",
            str(tmp_path / "out"),
        ]
    )
    assert status == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert (
        "DataError" in err
        and "datasets/README.md" in err
        and str(tmp_path / "nowhere" / "coco") in err
    )


def test_config_and_weights_errors_are_one_clear_line(tmp_path, capsys):
    status = load_tool("train").main([str(REPO / "configs/quickstart.yaml"), "solver.base_lrr=0.1"])
    assert status == 1
    err = capsys.readouterr().err
    assert (
        "solver.base_lrr" in err
        and "did you mean 'solver.base_lr'" in err
        and "Traceback" not in err
    )
    status = load_tool("test").main(
        [
            str(REPO / "configs/quickstart.yaml"),
            "--weights",
            str(tmp_path / "missing.pth"),
            "--output-dir",
            str(tmp_path / "out"),
        ]
    )
    assert status == 1
    assert "checkpoint not found" in capsys.readouterr().err
