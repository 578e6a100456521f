"""detkit's R50-FPN config must give torchvision's fasterrcnn_resnet50_fpn detections on real photos.

torchvision's model gets seeded random weights (frozen BN with random statistics, as a pretrained
model has; a small-std predictor so the boxes look like a real detector's), is converted with
tools/convert_weights.py, loaded through Detector.from_checkpoint and run through detkit's own
preprocessing. Criterion: >= 99% of torchvision's detections have a detkit detection with the same
label (torchvision label - 1), IoU >= 0.99 and |score difference| <= 1e-3.

The onnxruntime backend is checked on a calibrated variant of the model (>= 98%, issue 15): each
frozen BN's statistics are those of its input on the photos, as a trained network's BN statistics
are. With purely random statistics the activations reach ~1e3 and about half of torchvision's
detections are thinner than 8 px (some 0.1 px), where IoU >= 0.99 asks for PyTorch's exact float
rounding: measured on that model, onnxruntime matches 82% of all detections and 100% of those at
least 8 px on each side, and PyTorch itself with channels_last (80%) or BN folding (82%) does no
better. On the calibrated model all three match 100%.
"""

import pytest

from tests.helpers import ROOT
from tests.modeling.torchvision_reference import (
    as_torchvision_input,
    convert,
    make_torchvision_model,
    photo_paths,
    read_rgb,
    torchvision_match,
)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tv = make_torchvision_model()
    return tv, convert(tv, tmp_path_factory.mktemp("parity"))


@pytest.fixture(scope="module")
def converted_calibrated(tmp_path_factory):
    photos = [as_torchvision_input(read_rgb(p)) for p in photo_paths()]
    tv = make_torchvision_model(calibrate_on=photos)
    return tv, convert(tv, tmp_path_factory.mktemp("parity_calibrated"))


@pytest.mark.slow
def test_converted_checkpoint_matches_torchvision_on_photos(converted):
    from detkit import Detector

    tv, ckpt = converted
    # the plain arithmetic: this model's ill-conditioned random BN statistics (module docstring)
    # need PyTorch's exact rounding; the default CPU fast path (folded BN, channels_last) is checked
    # on the calibrated model in tests/modeling/test_inference_fast_path.py
    det = Detector.from_checkpoint(
        str(ckpt), overrides=["test.fuse_bn=false", "test.memory_format=contiguous"]
    )
    assert det.class_names[0] == "person" and len(det.class_names) == 90
    fraction = torchvision_match(tv, det)
    assert fraction >= 0.99, f"only {fraction:.3f} of torchvision's detections matched"


@pytest.mark.slow
def test_onnxruntime_backend_matches_torchvision_on_photos(
    converted_calibrated, monkeypatch, tmp_path
):
    """torchvision's weights through the onnxruntime backend (the checkpoint exported to ONNX,
    cached next to it): >= 98% of torchvision's detections matched (issue 15's criterion), on the
    calibrated model (see the module docstring for why not on the other)."""
    pytest.importorskip("onnxruntime", reason="optional extra detkit[export] not installed")
    from detkit import Detector

    monkeypatch.setenv("DETKIT_CACHE", str(tmp_path))
    tv, ckpt = converted_calibrated
    det = Detector.from_checkpoint(str(ckpt), backend="onnxruntime")
    assert det.predictor.backend == "onnxruntime"
    fraction = torchvision_match(tv, det)
    assert fraction >= 0.98, f"only {fraction:.3f} of torchvision's detections matched"


def test_architecture_identical_to_torchvision(converted):
    """Every torchvision tensor has a detkit counterpart of the same shape and vice versa."""
    from detkit.checkpoint.torchvision_names import torchvision_detector_to_detkit
    from detkit.config import load_config
    from detkit.modeling import build_model

    tv, _ = converted
    model = build_model(
        load_config(ROOT / "configs/frcnn_r50_fpn_coco.yaml", ["model.num_classes=90"])
    )
    converted_state = torchvision_detector_to_detkit(tv.state_dict())
    own = model.state_dict()
    assert set(converted_state) == set(own)
    assert all(converted_state[k].shape == own[k].shape for k in own)
