"""Predicting has no hidden side effects: the Detector's model stays as loaded (BN is folded in a
copy), nothing is patched onto the caller's model, and TF32 is switched on only when asked."""

import copy

import pytest
import torch

from detkit import Detector
from detkit.engine.launch import enable_tf32
from detkit.inference.backends import make_predictor
from detkit.inference.predictor import optimize_for_inference
from detkit.modeling import build_model
from detkit.modeling.backbones.norm import fixed_affine
from tests.helpers import save_tiny_checkpoint, smooth_image, tiny_config

# frozen BN in the backbone: something for test.fuse_bn to fold
FROZEN_BN = ["model.backbone.norm=FrozenBN", "test.fuse_bn=true"]


def test_predict_leaves_the_detectors_model_as_loaded(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "bn.pth", FROZEN_BN)
    det = Detector.from_checkpoint(str(ckpt))
    before = copy.deepcopy(det.model.state_dict())
    layout = det.model.backbone.conv1.weight.is_contiguous()
    assert det.predict([smooth_image(120, 160, 0)])[0]["boxes"].shape[1] == 4
    after = det.model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert det.model.backbone.conv1.weight.is_contiguous() == layout
    assert any(fixed_affine(m) is not None for m in det.model.modules())  # nothing folded here
    # the file it saves loads into a fresh model built from its config
    fresh = build_model(det.cfg, class_names=det.class_names)
    fresh.load_state_dict(after, strict=True)


def test_the_predictor_runs_a_folded_copy(tmp_path):
    cfg = tiny_config(*FROZEN_BN)
    model = build_model(cfg).eval()
    optimized = optimize_for_inference(model, cfg)
    assert optimized is not model
    assert not any(fixed_affine(m) is not None for m in optimized.modules())  # all folded
    assert any(fixed_affine(m) is not None for m in model.modules())


def test_make_predictor_patches_nothing_onto_the_callers_model():
    cfg = tiny_config(*FROZEN_BN, "test.parallel_images=1", "test.memory_format=contiguous")
    model = build_model(cfg).eval()
    attributes = dict(vars(model))
    make_predictor(model, cfg)
    assert not hasattr(model, "backend")
    assert vars(model).keys() == attributes.keys()


@pytest.fixture
def matmul_precision():
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


def test_tf32_is_an_explicit_call(matmul_precision, tmp_path):
    torch.set_float32_matmul_precision("highest")
    det = Detector.from_checkpoint(str(save_tiny_checkpoint(tmp_path / "m.pth")))
    det.predict([smooth_image(64, 64, 0)])
    assert torch.get_float32_matmul_precision() == "highest"  # the package never sets it
    assert enable_tf32() == torch.cuda.is_available()
    expected = "high" if torch.cuda.is_available() else "highest"
    assert torch.get_float32_matmul_precision() == expected
