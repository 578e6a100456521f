"""User errors end a tool with one line and exit status 1: unreadable images (with and without loader
workers), FrozenBN training without weights, a missing GPU, and errors under several processes."""

import json
import os
import shutil
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

from detkit.errors import ConfigError
from detkit.modeling import build_model
from detkit.modeling.build import check_backbone_init
from detkit.utils.io import atomic_save
from tests.engine.helpers import REPO, free_port, load_tool, tiny_config
from tests.helpers import error_lines


@pytest.fixture
def broken_data(data_root, tmp_path):
    """A copy of the engine data: every training image missing, validation image 3 truncated."""
    root = tmp_path / "broken"
    shutil.copytree(data_root, root)
    for image in (root / "train" / "JPEGImages").iterdir():
        image.unlink()
    val = root / "val" / "JPEGImages" / "000003.jpg"
    val.write_bytes(val.read_bytes()[:300])
    cfg_file = tmp_path / "broken.yaml"
    tiny_config(root).dump(cfg_file)
    return root, cfg_file


def test_missing_training_images_are_one_line_before_any_step(broken_data, tmp_path, capsys):
    root, cfg_file = broken_data
    out = tmp_path / "out"
    assert load_tool("train").main([str(cfg_file), "--output-dir", str(out)]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    ann_file = root / "train" / "annotations.json"
    assert f"DataError: 12 of 12 image files listed in {ann_file} do not exist: " in line
    assert f"{root}/train/JPEGImages/000001.jpg (image id 1), " in line
    assert f"is the image folder {root}/train/JPEGImages right?" in line
    assert line.endswith("data.skip_broken_images=true skips unreadable images")
    assert not list(out.glob("*.pth"))


@pytest.mark.parametrize(
    "override, allowed",
    [
        ("test.precision=bf61", "expected auto | fp32 | bf16 | fp16, got 'bf61'"),
        ("test.merge=vot", "expected nms | soft_nms | vote, got 'vot'"),
        ("test.parallel_images=0", "expected auto | an int >= 1, got 0"),
    ],
)
def test_a_bad_config_value_is_one_line_before_anything_runs(
    broken_data, tmp_path, capsys, override, allowed
):
    _, cfg_file = broken_data  # its images are missing: the config fails first
    out = tmp_path / "out"
    assert load_tool("train").main([str(cfg_file), override, "--output-dir", str(out)]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    key = override.split("=")[0]
    assert f"ConfigError: config key '{key}' (command line): {allowed}" in line
    assert not out.exists() or not list(out.iterdir())


@pytest.mark.parametrize("workers", [0, 1])
def test_testing_on_a_truncated_image_is_one_line(broken_data, tmp_path, capsys, workers):
    root, cfg_file = broken_data
    cfg = tiny_config(root)
    torch.manual_seed(0)
    model = build_model(cfg, ["circle", "rectangle"])
    weights = tmp_path / "model.pth"
    atomic_save({"model": model.state_dict(), "config": cfg.to_dict()}, weights)
    args = [str(cfg_file), "--weights", str(weights), f"data.num_workers={workers}"]
    assert load_tool("test").main(args + ["--output-dir", str(tmp_path / "test")]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    image = root / "val" / "JPEGImages" / "000003.jpg"
    assert f"DataError: cannot decode image file {image} (truncated or corrupted?)" in line
    assert line.endswith(
        f"(image id 3 in {root / 'val' / 'annotations.json'}); "
        "data.skip_broken_images=true skips unreadable images"
    )


# ---------------------------------------------------------------- FrozenBN without weights
def test_frozen_bn_training_without_weights_is_refused(data_root, tmp_path, capsys):
    cfg_file = tmp_path / "frozen.yaml"
    tiny_config(data_root, ["model.backbone.norm=FrozenBN", "model.backbone.freeze_at=2"]).dump(
        cfg_file
    )
    assert load_tool("train").main([str(cfg_file), "--output-dir", str(tmp_path / "out")]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert f"ConfigError: config key 'model.backbone.norm' ({cfg_file})" in line
    for hint in (
        "model.backbone.weights=FILE",
        "resnet18-*.pth",
        "R-101.pkl",
        "--from detectron2-imagenet",
        "model.weights=FILE",
        "model.backbone.norm=GN",
        "model.backbone.allow_random_init=true",
    ):
        assert hint in line, hint
    assert not (tmp_path / "out" / "last.pth").exists()


@pytest.mark.parametrize(
    "extra, refused",
    [
        ([], True),
        (["model.backbone.allow_random_init=true"], False),
        (["model.backbone.weights=/somewhere/resnet18.pth"], False),
        (["model.weights=/somewhere/detector.pth"], False),
        (["model.backbone.norm=BN"], False),
    ],
)
def test_which_frozen_bn_configs_may_train(data_root, extra, refused):
    cfg = tiny_config(data_root, ["model.backbone.norm=FrozenBN", *extra])
    if refused:
        with pytest.raises(ConfigError, match="FrozenBN needs pretrained weights"):
            check_backbone_init(cfg)
        build_model(cfg)  # only training is refused: inference loads the weights after building
    else:
        check_backbone_init(cfg)


# ---------------------------------------------------------------- resume with another optimizer
def test_resume_with_another_optimizer_is_one_line(data_root, tmp_path, capsys):
    cfg_file, out = tmp_path / "sgd.yaml", tmp_path / "out"
    tiny_config(
        data_root, ["solver.max_iter=2", "solver.steps=[1]", "solver.checkpoint_period=1"]
    ).dump(cfg_file)
    assert load_tool("train").main([str(cfg_file), "--output-dir", str(out)]) == 0
    capsys.readouterr()
    args = [str(cfg_file), "solver.max_iter=4", "solver.optimizer=AdamW", "--resume"]
    assert load_tool("train").main(args + ["--output-dir", str(out)]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert (
        f"ConfigError: --resume: {out / 'last.pth'} was trained with solver.optimizer=SGD" in line
    )
    assert "this run asks for AdamW" in line and "resume with solver.optimizer=SGD" in line


# ---------------------------------------------------------------- devices
def test_video_device_cuda_without_cuda_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    args = ["missing.pth", "--input", str(tmp_path), "--device", "cuda"]
    assert load_tool("video").main(args) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert "ConfigError: --device='cuda' asks for CUDA, but this machine has no usable CUDA" in line


# ---------------------------------------------------------------- several processes
WORLD = 2


def _rank_main(rank: int, port: int, out: str, nowhere: str) -> None:
    """Run tools/train.py as rank ``rank`` of 2, twice: a bad config key (fails before the process
    group exists) and a missing dataset (fails on rank 0 while building it, inside the group)."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(WORLD),
    )
    torch.set_num_threads(1)
    train = load_tool("train")
    config = str(REPO / "configs" / "frcnn_r50_fpn_coco.yaml")
    report = {}
    for case, args in {
        "config": [config, "solver.base_lrr=0.1"],
        "dataset": [config, f"data.root={nowhere}", "--output-dir", os.path.join(out, "run")],
    }.items():
        err_file = os.path.join(out, f"{case}_rank{rank}.err")
        with open(err_file, "w") as err:
            sys.stderr = err  # what this rank prints to the console
            try:
                report[case] = train.main(args)
            finally:
                sys.stderr = sys.__stderr__
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)


@pytest.mark.slow
def test_two_ranks_print_a_user_error_once_and_both_fail(tmp_path):
    nowhere = str(tmp_path / "nowhere")
    ctx = mp.spawn(_rank_main, args=(free_port(), str(tmp_path), nowhere), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail("the 2-process run hung")
    for rank in range(WORLD):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == {
            "config": 1,
            "dataset": 1,
        }
    console = {
        (case, r): (tmp_path / f"{case}_rank{r}.err").read_text()
        for case in ("config", "dataset")
        for r in range(WORLD)
    }
    assert console[("config", 1)] == "" and console[("dataset", 1)] == ""
    (line,) = error_lines(console[("config", 0)])
    assert "did you mean 'solver.base_lr'" in line
    (line,) = error_lines(console[("dataset", 0)])
    assert f"DataError: COCO annotation file not found: {nowhere}/coco/" in line
    # rank 1 logs why it stopped, quoting rank 0's error, in its own log file
    rank1_log = (tmp_path / "run" / "log_rank1.txt").read_text()
    assert "TrainingError: building the train dataset failed on rank 0: DataError:" in rank1_log
