"""detectron2 / Caffe2 files: the restricted .pkl reader, the name mapping, and the errors that say
which config a file fits. No detectron2 needed (its parity is tests/modeling/test_detectron2_parity.py)."""

import pickle
import re

import numpy as np
import pytest
import torch

from detkit.checkpoint import load_checkpoint, load_model_weights
from detkit.checkpoint.config_match import configs_fitting
from detkit.checkpoint.convert import caffe2_backbone_file
from detkit.checkpoint.detectron2_names import caffe2_to_torchvision, detectron2_to_detkit
from detkit.config import load_config
from detkit.errors import CheckpointError, ConfigError
from detkit.utils.io import atomic_save
from tests.helpers import ROOT, tiny_config


class _RunsCode:
    """Unpickling this would create ``marker``: what a malicious weights file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pkl_reader_refuses_anything_but_arrays(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "model_final.pkl"
    bad.write_bytes(pickle.dumps({"model": {"w": _RunsCode(marker)}}))
    with pytest.raises(
        CheckpointError, match="refused to read " + re.escape(str(bad)) + ": it refers to .*open"
    ):
        load_checkpoint(bad)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_pkl_zoo_file_is_converted_in_memory(tmp_path, protocol):
    """A zoo file (numpy arrays, detectron2 names) comes back as a detkit checkpoint with the
    zoo's class names; protocol 2 is how Python-2-era files store bytes (_codecs.encode)."""
    state = {
        "proposal_generator.rpn_head.conv.weight": np.ones((4, 4, 3, 3), np.float32),
        "roi_heads.box_predictor.cls_score.bias": np.zeros(81, np.float32),
        "roi_heads.box_predictor.bbox_pred.bias": np.zeros(320, np.float32),
        "pixel_mean": np.zeros((3, 1, 1), np.float32),
    }
    path = tmp_path / "model_final_x.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "Detectron2 Model Zoo"}, f, protocol=protocol)
    ckpt = load_checkpoint(path)
    assert set(ckpt["model"]) == {
        "rpn.head.conv.weight",
        "roi_heads.predictor.cls_score.bias",
        "roi_heads.predictor.bbox_pred.bias",
    }
    assert isinstance(ckpt["model"]["rpn.head.conv.weight"], torch.Tensor)
    assert ckpt["class_names"][:3] == ["person", "bicycle", "car"]
    assert len(ckpt["class_names"]) == 80 and "N/A" not in ckpt["class_names"]
    assert ckpt["source"] == f"detectron2:{path}"


# detectron2 name -> detkit name, for each design (names checked against detectron2's models)
D2_NAMES = {
    # C4: backbone ends at res4, res5 is the box head
    "backbone.stem.conv1.weight": "backbone.conv1.weight",
    "backbone.stem.conv1.norm.running_var": "backbone.bn1.running_var",
    "backbone.res2.0.conv1.weight": "backbone.layer1.0.conv1.weight",
    "backbone.res4.5.conv3.norm.bias": "backbone.layer3.5.bn3.bias",
    "backbone.res3.0.shortcut.weight": "backbone.layer2.0.downsample.0.weight",
    "backbone.res3.0.shortcut.norm.weight": "backbone.layer2.0.downsample.1.weight",
    "roi_heads.res5.0.conv2.norm.running_mean": "roi_heads.box_head.res5.0.bn2.running_mean",
    "roi_heads.res5.0.shortcut.weight": "roi_heads.box_head.res5.0.downsample.0.weight",
    # DC5: res5 in the backbone; FPN: the ResNet is bottom_up
    "backbone.res5.2.conv2.weight": "backbone.layer4.2.conv2.weight",
    "backbone.bottom_up.res5.2.conv2.weight": "backbone.layer4.2.conv2.weight",
    "backbone.bottom_up.stem.conv1.norm.weight": "backbone.bn1.weight",
    "backbone.fpn_lateral2.weight": "neck.lateral_convs.0.weight",
    "backbone.fpn_output5.bias": "neck.output_convs.3.bias",
    "roi_heads.box_head.fc1.weight": "roi_heads.box_head.fc6.weight",
    "roi_heads.box_head.fc2.bias": "roi_heads.box_head.fc7.bias",
    # all designs
    "proposal_generator.rpn_head.conv.bias": "rpn.head.conv.bias",
    "proposal_generator.rpn_head.objectness_logits.weight": "rpn.head.objectness.weight",
    "proposal_generator.rpn_head.anchor_deltas.bias": "rpn.head.deltas.bias",
    "roi_heads.box_predictor.cls_score.weight": "roi_heads.predictor.cls_score.weight",
    "roi_heads.box_predictor.bbox_pred.bias": "roi_heads.predictor.bbox_pred.bias",
}


@pytest.mark.parametrize("d2_name", list(D2_NAMES))
def test_detectron2_names(d2_name):
    value = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = detectron2_to_detkit({d2_name: value})
    assert list(out) == [D2_NAMES[d2_name]]
    assert out[D2_NAMES[d2_name]].tolist() == value.tolist()  # copied verbatim, never reordered


def test_detectron2_non_parameters_are_dropped():
    state = {
        "proposal_generator.anchor_generator.cell_anchors.0": np.zeros((15, 4), np.float32),
        "module.pixel_std": np.ones((3, 1, 1), np.float32),  # a DDP-wrapped save
        "module.proposal_generator.rpn_head.conv.bias": np.ones(4, np.float32),
    }
    assert list(detectron2_to_detkit(state)) == ["rpn.head.conv.bias"]


def test_unknown_detectron2_parameter_is_named():
    state = {"roi_heads.box_head.conv1.weight": np.zeros(1, np.float32)}
    with pytest.raises(CheckpointError, match=r"zoo.pkl: .*'roi_heads.box_head.conv1.weight'"):
        detectron2_to_detkit(state, "zoo.pkl")


def test_caffe2_imagenet_names():
    blobs = {
        "conv1_w": np.ones((64, 3, 7, 7), np.float32),
        "conv1_b": np.zeros(64, np.float32),  # MSRA files have it; the stem conv has no bias
        "res_conv1_bn_s": np.full(64, 2.0, np.float32),
        "res_conv1_bn_b": np.zeros(64, np.float32),
        "res2_0_branch2a_w": np.zeros((64, 64, 1, 1), np.float32),
        "res2_0_branch2a_bn_s": np.ones(64, np.float32),
        "res2_0_branch2a_bn_b": np.zeros(64, np.float32),
        "res3_0_branch1_w": np.zeros((512, 256, 1, 1), np.float32),
        "res3_0_branch1_bn_s": np.ones(512, np.float32),
        "res4_22_branch2c_bn_b": np.ones(1024, np.float32),
        "res5_2_branch2b_w_momentum": np.zeros(1, np.float32),
        "fc1000_w": np.zeros((1000, 2048), np.float32),
    }
    out = caffe2_to_torchvision(blobs)
    assert out["bn1.weight"].tolist() == [2.0] * 64
    # Caffe2's folded batch norm: mean 0, variance 1 (as detectron2 loads it)
    assert out["bn1.running_mean"].abs().sum() == 0 and (out["bn1.running_var"] == 1).all()
    assert set(out) >= {
        "conv1.weight",
        "layer1.0.conv1.weight",
        "layer1.0.bn1.running_var",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_mean",
        "layer3.22.bn3.bias",
    }
    assert not any(k.startswith(("fc", "conv1.bias")) or "momentum" in k for k in out)
    with pytest.raises(CheckpointError, match="R-50.pkl: Caffe2 blob 'res2_0_odd_w'"):
        caffe2_to_torchvision({"res2_0_odd_w": np.zeros(1, np.float32)}, "R-50.pkl")


def test_imagenet_conversion_refuses_a_torchvision_style_config(tmp_path):
    """MSRA weights need BGR, std 1 and stride in the 1x1: a torchvision-style config is refused
    by name instead of silently training from a mismatched initialisation."""
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump(
            {"conv1_w": np.zeros((64, 3, 7, 7), np.float32), "res2_0_branch2a_w": np.zeros(1)}, f
        )
    with pytest.raises(ConfigError, match=r"'model.backbone.stride_in_1x1' is False in .*r50_fpn"):
        caffe2_backbone_file(path, ROOT / "configs/frcnn_r50_fpn_coco.yaml")


def _meta_shapes(config, *overrides):
    from detkit.modeling import build_model

    with torch.device("meta"):
        model = build_model(load_config(config, ["model.backbone.weights=", *overrides]))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_configs_fitting_finds_the_design_and_the_class_count():
    fpn_voc = _meta_shapes(ROOT / "configs/frcnn_r50_fpn_coco.yaml", "model.num_classes=20")
    assert "configs/frcnn_r50_fpn_coco.yaml model.num_classes=20" in configs_fitting(fpn_voc)
    c4 = _meta_shapes(ROOT / "configs/frcnn_r101_coco.yaml")
    assert "configs/frcnn_r101_coco.yaml" in configs_fitting(c4)
    assert not any("fpn" in c for c in configs_fitting(c4))


def test_mismatch_error_names_tensors_and_the_fitting_config(tmp_path):
    """A tiny C4 file given to the tiny FPN model: the error lists what is missing, unused and
    misshapen by name and shape (no config under configs/ fits a tiny model)."""
    from detkit.modeling import build_model
    from tests.helpers import TINY_C4

    c4 = build_model(tiny_config(base=TINY_C4))
    atomic_save({"model": c4.state_dict()}, tmp_path / "c4.pth")
    fpn = build_model(tiny_config("model.num_classes=5"))
    with pytest.raises(CheckpointError) as err:
        load_model_weights(fpn, tmp_path / "c4.pth", strict=True)
    msg = str(err.value)
    assert f"{tmp_path / 'c4.pth'} does not fit" in msg
    assert (
        "35 are missing (model tensors not in the file): backbone.layer4.* (15), "
        "neck.lateral_convs.* (8), neck.output_convs.* (8), roi_heads.box_head.* (4);" in msg
    )
    assert "15 are not used by the model: roi_heads.box_head.* (15)" in msg
    assert (
        "10 tensors differ in shape: rpn.head.conv.weight (file (256, 256, 3, 3), model (32, "
        in msg
    )
    assert "check model.num_classes" in msg


def test_mismatch_error_for_torchvision_names(tmp_path):
    from detkit.modeling import build_model

    atomic_save({"backbone.body.conv1.weight": torch.zeros(1)}, tmp_path / "tv.pth")
    with pytest.raises(CheckpointError, match="--from torchvision"):
        load_model_weights(build_model(tiny_config()), tmp_path / "tv.pth", strict=True)
