"""TorchScript and ONNX export: one file for every image size, detections equal to PyTorch's.

Parity criterion (as the torchvision parity test): >= 99% of PyTorch's detections have an exported
detection with the same label, IoU >= 0.99 and |score difference| <= 1e-3, checked at several image
sizes with ONE exported file. The sizes include 97x203, where the test scale 256/203 makes
floor(203 * scale) land exactly on 256 (an export that divides in float32 gets 255).
"""

import re

import numpy as np
import pytest
import torch

from detkit import Detector
from detkit.errors import BackendError
from detkit.evaluation.parity import match_fraction
from detkit.export import ExportableDetector, export_torchscript, exportable, load_torchscript
from detkit.export.check import default_check_images
from tests.helpers import SIZES, TINY_C4, TINY_FPN, load_tool, save_tiny_checkpoint, smooth_image


@pytest.fixture(scope="module", params=["fpn", "c4_context"])
def det(request, tmp_path_factory):
    # C4: res5 runs per RoI, so fewer proposals keep the test fast
    base, extra = (
        (TINY_FPN, [])
        if request.param == "fpn"
        else (TINY_C4, ["model.roi_heads.context=true", "model.rpn.post_nms_topk_test=64"])
    )
    path = save_tiny_checkpoint(tmp_path_factory.mktemp("export") / "m.pth", extra, base=base)
    return Detector.from_checkpoint(str(path))


def reference(det, image):
    with torch.no_grad():
        return {k: v for k, v in det.model([det.sample(image)])[0].items()}


def test_export_graph_resizes_exactly_like_the_model(det):
    """The in-graph sample (scale as a tensor) resizes and pads exactly like Detector.sample's."""
    module = exportable(det)
    for h, w in SIZES + [(203, 97), (128, 128), (3, 300)]:
        image = torch.zeros(3, h, w, dtype=torch.uint8)
        sample = det.sample(image.permute(1, 2, 0).numpy())
        expected = det.model.preprocess([sample])
        got = det.model.preprocess([module.sample(image)])
        assert tuple(int(v) for v in got.image_sizes[0]) == expected.image_sizes[0], (h, w)
        assert tuple(got.tensor.shape) == tuple(expected.tensor.shape)


@pytest.mark.slow
def test_onnx_matches_pytorch_at_several_sizes_with_one_file(det, tmp_path):
    pytest.importorskip("onnx", reason="optional extra detkit[export] (onnx) not installed")
    pytest.importorskip(
        "onnxruntime", reason="optional extra detkit[export] (onnxruntime) not installed"
    )
    from detkit.export import OnnxRuntimePredictor, export_onnx

    path = export_onnx(det, str(tmp_path / "m.onnx"))
    cfg = det.cfg
    runner = OnnxRuntimePredictor.open(
        path, min_size=cfg.input.min_size_test, max_size=cfg.input.max_size_test
    )
    assert runner.class_names == det.class_names
    dims = runner.session.get_inputs()[0].shape
    assert dims[0] == 3 and isinstance(dims[1], str) and isinstance(dims[2], str)  # dynamic H, W
    total = 0
    for i, (h, w) in enumerate(SIZES):
        image = smooth_image(h, w, seed=i)
        ref, out = reference(det, image), runner([det.sample(image)])[0]
        assert out["boxes"].dtype == torch.float32 and out["labels"].dtype == torch.int64
        assert match_fraction(ref, out) >= 0.99, (h, w)
        assert len(out["boxes"]) <= len(ref["boxes"]) + 1  # no flood of extra detections either
        total += len(ref["boxes"])
    assert total > 0  # the comparison is not vacuous


def test_torchscript_matches_pytorch_at_two_sizes(det, tmp_path):
    path = export_torchscript(det, str(tmp_path / "m.pt"))
    module, names = load_torchscript(path)
    assert names == det.class_names
    for image in default_check_images():
        ref = reference(det, image)
        with torch.no_grad():
            b, s, l = module(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))))
        assert len(ref["boxes"]) > 0
        assert match_fraction(ref, {"boxes": b, "scores": s, "labels": l}) >= 0.99


@pytest.mark.slow
def test_export_tool_with_check(tmp_path):
    pytest.importorskip(
        "onnxruntime", reason="optional extra detkit[export] (onnxruntime) not installed"
    )
    ckpt = save_tiny_checkpoint(tmp_path / "tiny.pth")
    tool = load_tool("export")
    assert (
        tool.main([str(ckpt), "--format", "onnx", "--output", str(tmp_path / "x.onnx"), "--check"])
        == 0
    )
    assert (tmp_path / "x.onnx").stat().st_size > 0
    assert (
        tool.main(
            [str(ckpt), "--format", "onnx", "--opset", "11", "--output", str(tmp_path / "y.onnx")]
        )
        == 1
    )


def test_unsupported_parts_are_refused_clearly(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "r.pth", ["model.roi_heads.refine_iterations=1"])
    det = Detector.from_checkpoint(str(ckpt))
    with pytest.raises(BackendError, match="refine_iterations"):
        ExportableDetector(det.model, min_size=128, max_size=256)


@pytest.mark.parametrize(
    "override", ["input.resize_rounding=round", "model.resize_interpolation=pil_bilinear"]
)
def test_resize_conventions_the_graph_lacks_are_refused(tmp_path, override):
    det = Detector.from_checkpoint(
        str(save_tiny_checkpoint(tmp_path / "d.pth")), overrides=[override]
    )
    with pytest.raises(BackendError, match=override.split("=")[0].replace(".", r"\.")):
        export_torchscript(det, str(tmp_path / "d.pt"))
    assert not (tmp_path / "d.pt").exists()


@pytest.mark.parametrize(
    "override", ["test.scales=[96,128]", "test.flip=true", "test.precision=bf16"]
)
def test_the_export_refuses_what_the_graph_lacks_as_the_backend_does(tmp_path, override):
    """Test-time augmentation and bf16/fp16 are not in the graph: the export refuses them (as the
    onnxruntime backend does, from the same list) instead of dropping them with a warning."""
    det = Detector.from_checkpoint(
        str(save_tiny_checkpoint(tmp_path / "t.pth")), overrides=[override]
    )
    shown = override.replace(",", ", ")  # lists print as [96, 128]
    with pytest.raises(BackendError, match=rf"the export cannot .*{re.escape(shown)} \(.*: set "):
        export_torchscript(det, str(tmp_path / "t.pt"))
    assert not (tmp_path / "t.pt").exists()


def test_a_frozen_size_dependent_value_fails_the_export(tmp_path, monkeypatch):
    """The guard: tracing refuses when detkit's code turns a traced size into a Python value. Here
    the RPN's pre-NMS top-k is made to take its eager branch, min(top-k, number of anchors)."""
    det = Detector.from_checkpoint(str(save_tiny_checkpoint(tmp_path / "f.pth")))
    monkeypatch.setattr("detkit.modeling.rpn.Tensor", type("NotATensor", (), {}))
    with pytest.raises(BackendError, match=r"froze .*rpn\.py"):
        export_torchscript(det, str(tmp_path / "f.pt"))


def test_match_fraction_criterion():
    ref = {
        "boxes": np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32),
        "scores": np.array([0.9, 0.5]),
        "labels": np.array([1, 2]),
    }
    same = {k: v.copy() for k, v in ref.items()}
    assert match_fraction(ref, same) == 1.0
    shifted = {
        **same,
        "boxes": same["boxes"] + np.array([[0, 0, 0, 1], [0, 0, 0, 0]], np.float32),
    }  # IoU 0.91
    assert match_fraction(ref, shifted) == 0.5
    assert match_fraction(ref, {**same, "scores": same["scores"] + 2e-3}) == 0.0
    assert match_fraction(ref, {**same, "labels": same["labels"][::-1].copy()}) == 0.0
    empty = {k: v[:0] for k, v in ref.items()}
    assert match_fraction(empty, empty) == 1.0 and match_fraction(empty, same) == 0.0
