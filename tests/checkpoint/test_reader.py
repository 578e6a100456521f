"""The one loader: every error names the file (a missing, a truncated and a non-checkpoint file),
through the API and the engine's resume; a file that does not fit names the keys; the ImageNet
initialisation of model.backbone.weights goes into the backbone and the C4 head."""

import os
import re

import pytest
import torch
import torchvision
from torch import nn

from detkit.api import Detector
from detkit.checkpoint import init_from_config, load_checkpoint, load_model_weights
from detkit.config import load_config
from detkit.engine.checkpoint import Checkpointer
from detkit.errors import CheckpointError, DetkitError
from detkit.modeling import build_model
from detkit.utils.io import atomic_save
from tests.helpers import TINY_C4, tiny_config


def _truncated(tmp_path):
    path = tmp_path / "truncated.pth"
    atomic_save({"model": {"w": torch.ones(1000)}, "config": {}}, path)
    with open(path, "r+b") as f:
        f.truncate(300)
    return path


def _not_a_checkpoint(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    return path


def test_loader_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.pth"
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint not found: {missing}")):
        load_checkpoint(missing)
    truncated = _truncated(tmp_path)
    with pytest.raises(
        CheckpointError, match=re.escape(f"cannot read checkpoint {truncated}")
    ) as e:
        load_checkpoint(truncated)
    # torch's first sentence says what failed; its paragraph about miniz is not repeated
    assert "failed reading zip archive" in str(e.value) and "miniz" not in str(e.value)
    assert str(e.value).endswith("(the file is truncated or damaged, or is not a checkpoint)")
    listed = _not_a_checkpoint(tmp_path)
    with pytest.raises(
        CheckpointError, match=re.escape(f"{listed} holds a list, not a checkpoint dict")
    ):
        load_checkpoint(listed)
    plain = tmp_path / "plain.pth"
    torch.save({"w": torch.ones(2)}, plain)
    with pytest.raises(CheckpointError, match=re.escape(f"{plain} lacks ['model', 'config']")):
        load_checkpoint(plain, require=("model", "config"), what="a detkit checkpoint")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=re.escape(f"cannot read checkpoint {text}")):
        load_checkpoint(text)
    # one base for the tools (a missing file is a CheckpointError too, not a FileNotFoundError)
    assert issubclass(CheckpointError, ValueError) and issubclass(CheckpointError, DetkitError)


def test_weights_that_do_not_fit_name_the_file_and_the_keys(tmp_path):
    src = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    atomic_save({"model": src.state_dict()}, tmp_path / "det.pth")
    bigger = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2), nn.Linear(2, 2))
    with pytest.raises(CheckpointError, match=r"det.pth does not fit .* 2 are missing"):
        load_model_weights(bigger, tmp_path / "det.pth", strict=True)
    smaller = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(CheckpointError, match=r"det.pth does not fit .* 2 are not used"):
        load_model_weights(smaller, tmp_path / "det.pth", strict=True)
    torch.save({"model": [1]}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="odd.pth holds no state dict of tensors"):
        load_model_weights(smaller, tmp_path / "odd.pth", strict=False)


def test_api_loader_errors_name_the_file(tmp_path):
    cfg = load_config(None, ["model.backbone.depth=18", "model.backbone.weights=''"])
    for path, error, message in (
        (tmp_path / "missing.pth", CheckpointError, "checkpoint not found: {}"),
        (_truncated(tmp_path), CheckpointError, "cannot read checkpoint {}"),
        (_not_a_checkpoint(tmp_path), ValueError, "{} holds a list"),
    ):
        with pytest.raises(error, match=re.escape(message.format(path))):
            Detector.from_checkpoint(str(path))
        with pytest.raises(error, match=re.escape(message.format(path))):
            Detector.from_config(cfg, weights=str(path))
    plain = tmp_path / "plain.pth"
    torch.save({"w": torch.ones(2)}, plain)
    with pytest.raises(
        ValueError, match=re.escape(str(plain)) + " lacks .*not a detkit checkpoint"
    ):
        Detector.from_checkpoint(str(plain))


def test_engine_resume_errors_name_the_files(tmp_path, caplog):
    c = Checkpointer(tmp_path)
    c.save({"model": {}, "optimizer": {}, "iteration": 2}, 2)
    truncated = _truncated(tmp_path)
    os.replace(truncated, tmp_path / "last.pth")  # damages last.pth alone
    torch.save([1, 2], tmp_path / "model_0000004.pth")
    state, path = c.load_latest()
    assert state["iteration"] == 2 and path.name == "model_0000002.pth"
    assert str(tmp_path / "last.pth") in caplog.text
    assert f"{tmp_path / 'model_0000004.pth'} holds a list" in caplog.text
    (tmp_path / "model_0000002.pth").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no readable checkpoint") as info:
        c.load_latest()
    for name in ("last.pth", "model_0000004.pth", "model_0000002.pth"):
        assert str(tmp_path / name) in str(info.value)


def test_imagenet_weights_load_into_c4_head(tmp_path):
    tv = torchvision.models.resnet18()
    torch.save(tv.state_dict(), tmp_path / "r18.pth")
    cfg = tiny_config(
        f"model.backbone.weights={tmp_path / 'r18.pth'}",
        "model.backbone.norm=FrozenBN",
        base=TINY_C4,
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    assert not torch.equal(model.backbone.conv1.weight, tv.conv1.weight)  # building reads no file
    assert init_from_config(model, cfg) is model
    assert torch.equal(model.backbone.conv1.weight, tv.conv1.weight)
    assert torch.equal(model.roi_heads.box_head.res5[0].conv1.weight, tv.layer4[0].conv1.weight)
    assert torch.equal(model.backbone.layer3[1].bn2.running_var, tv.layer3[1].bn2.running_var)
