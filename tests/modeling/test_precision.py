"""test.precision: autocast inference (bf16 on CPU here, bf16/fp16 on CUDA) with float32 box math."""

import numpy as np
import pytest
import torch

from detkit import Detector
from detkit.config import load_config
from detkit.inference.predictor import build_predictor
from detkit.modeling.precision import (
    AutocastPredictor,
    autocast,
    resolve_precision,
    training_precision,
)
from detkit.modeling.tta import MultiScaleFlip
from tests.helpers import TINY_FPN
from tests.modeling.helpers import sample, tiny


def cfg(*overrides):
    return load_config(None, list(overrides))


def test_auto_follows_training_precision_on_cuda_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision(cfg(), cpu) == "fp32"
    assert resolve_precision(cfg(), cuda) == "fp32"  # solver.amp off
    amp = cfg("solver.amp=true", "solver.amp_dtype=fp16")
    assert resolve_precision(amp, cuda) == "fp16"
    assert resolve_precision(amp, cpu) == "fp32"
    assert resolve_precision(cfg("test.precision=bf16"), cpu) == "bf16"


def test_one_autocast_helper_for_training_and_inference():
    layer, x = torch.nn.Linear(4, 4), torch.randn(2, 4)
    with autocast(torch.device("cpu"), "fp32"):
        assert layer(x).dtype == torch.float32
    with autocast(torch.device("cpu"), "bf16"):
        assert layer(x).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="fp32, bf16, fp16; got 'fp8'"):
        autocast(torch.device("cpu"), "fp8")
    amp = cfg("solver.amp=true", "solver.amp_dtype=fp16")
    assert training_precision(amp, torch.device("cuda")) == "fp16"
    assert training_precision(amp, torch.device("cpu")) == "fp32"  # AMP training needs CUDA


def test_bad_precision_is_a_clear_error():
    with pytest.raises(ValueError, match=r"expected auto \| fp32 \| bf16 \| fp16, got 'half'"):
        resolve_precision(cfg("test.precision=half"), torch.device("cpu"))
    with pytest.raises(ValueError, match="fp16 needs a CUDA device.*use bf16 or fp32"):
        resolve_precision(cfg("test.precision=fp16"), torch.device("cpu"))


def test_bf16_runs_convolutions_in_bf16_and_returns_float32_boxes():
    model = tiny(["model.roi_heads.score_thresh_test=0.0"]).eval()
    predictor = build_predictor(model, cfg(*TINY_FPN, "test.precision=bf16"))
    assert isinstance(predictor, AutocastPredictor)
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen.setdefault(name, output.dtype)  # returns None: the output is not replaced

        return hook

    model.backbone.conv1.register_forward_hook(record("conv"))
    model.roi_heads.predictor.bbox_pred.register_forward_hook(record("deltas"))
    with torch.no_grad():
        out = predictor([sample(size=(128, 160))])[0]
    assert seen == {"conv": torch.bfloat16, "deltas": torch.bfloat16}
    assert out["boxes"].dtype == torch.float32 and out["scores"].dtype == torch.float32
    assert len(out["boxes"]) > 0
    # after the pass, the same model still runs in float32 without the wrapper
    seen.clear()
    with torch.no_grad():
        model([sample(size=(128, 160))])
    assert seen["conv"] == torch.float32


def test_fp32_is_the_model_itself_and_tta_is_wrapped_inside_autocast():
    model = tiny().eval()
    assert build_predictor(model, cfg(*TINY_FPN)) is model
    p = build_predictor(model, cfg(*TINY_FPN, "test.flip=true", "test.precision=bf16"))
    assert isinstance(p, AutocastPredictor) and isinstance(p.model, MultiScaleFlip)


def test_detector_predict_uses_the_configured_predictor():
    det = Detector(tiny().eval(), cfg(*TINY_FPN, "test.flip=true", "test.parallel_images=1"))
    assert isinstance(det.predictor, MultiScaleFlip)
    image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    out = det.predict(image)[0]
    with torch.no_grad():
        ref = det.predictor([det.sample(image)])[0]
    np.testing.assert_array_equal(out["boxes"], ref["boxes"].numpy())


@pytest.mark.parametrize("name", ["ROIAlign", "ROIPool"])
def test_pooler_keeps_box_coordinates_float32_under_autocast(name):
    from torchvision.ops import roi_align, roi_pool

    from detkit.modeling.poolers import ROIAlign, ROIPool

    torch.manual_seed(0)
    pooler = {"ROIAlign": ROIAlign(output_size=7), "ROIPool": ROIPool(output_size=7)}[name]
    feature = torch.randn(1, 8, 64, 64).bfloat16()  # stride 16: a 1024 x 1024 image
    box = torch.tensor([[601.3, 598.7, 702.9, 705.1]])  # bf16 would round these to multiples of 4
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pooled = pooler([feature], [box], (1024, 1024))
    assert pooled.dtype == torch.bfloat16
    rois = torch.cat([torch.zeros(1, 1), box], dim=1)
    if name == "ROIAlign":
        expected = roi_align(feature.float(), rois, (7, 7), 1 / 16, 2, False)
    else:
        expected = roi_pool(feature.float(), rois, (7, 7), 1 / 16)
    torch.testing.assert_close(pooled, expected.bfloat16(), rtol=0, atol=0)


@pytest.mark.parametrize("fast", [False, True])
def test_bf16_on_a_cpu_without_bf16_instructions_warns(fast, monkeypatch, caplog):
    import logging

    import detkit.modeling.precision as precision

    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: fast)
    # the tools' logging setup (run by earlier tests) stops detkit's records at its own handlers
    monkeypatch.setattr(logging.getLogger("detkit"), "propagate", True)
    with caplog.at_level("WARNING", logger="detkit"):
        build_predictor(tiny().eval(), cfg(*TINY_FPN, "test.precision=bf16"))
    assert ("without bf16 instructions" in caplog.text) is (not fast)
