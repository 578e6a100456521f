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

import sys

import cv2
import pytest
import torch
import torchvision
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import box_iou
from torchvision.ops.misc import FrozenBatchNorm2d

from tests.conftest import ROOT, reference_data

sys.path.insert(0, str(ROOT / "tools"))

NUM_TV_CLASSES = 91


def make_torchvision_model(seed=0, calibrate_on=None):
    """torchvision's R50-FPN with seeded random weights. ``calibrate_on``: a list of float images;
    each frozen BN then takes its running statistics from its input on them (one forward pass:
    a pre-hook sets a layer's statistics before it runs), so that activations stay normalised as in
    a trained network and the boxes have realistic sizes."""
    torch.manual_seed(seed)
    backbone = _resnet_fpn_extractor(torchvision.models.resnet50(norm_layer=FrozenBatchNorm2d), 3)
    model = FasterRCNN(backbone, num_classes=NUM_TV_CLASSES).eval()
    norms = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    with torch.no_grad():
        for m in norms:
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.1, 0.1)
        if calibrate_on is not None:
            hooks = [m.register_forward_pre_hook(_take_input_statistics) for m in norms]
            model(calibrate_on)
            for h in hooks:
                h.remove()
        # normalised features need a wider classifier for scores above torchvision's 0.05 threshold
        cls_std, box_std = (0.001, 0.01) if calibrate_on is None else (0.03, 0.001)
        torch.nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight, std=cls_std)
        torch.nn.init.normal_(model.roi_heads.box_predictor.bbox_pred.weight, std=box_std)
    return model


def _take_input_statistics(norm, inputs):
    x = inputs[0]
    norm.running_mean.copy_(x.mean((0, 2, 3)))
    norm.running_var.copy_(x.var((0, 2, 3)))


def read_rgb(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def match_fraction(ref, out):
    """Fraction of reference detections matched by a detkit detection under the parity criterion."""
    if len(ref["boxes"]) == 0:
        return 1.0 if len(out["boxes"]) == 0 else 0.0
    iou = box_iou(ref["boxes"], torch.as_tensor(out["boxes"]))
    same_label = (ref["labels"][:, None] - 1) == torch.as_tensor(out["labels"])[None]
    close = (ref["scores"][:, None] - torch.as_tensor(out["scores"])[None]).abs() <= 1e-3
    return ((iou >= 0.99) & same_label & close).any(dim=1).float().mean().item()


def convert(tv, folder):
    """torchvision's state dict -> a detkit checkpoint, through tools/convert_weights.py."""
    import convert_weights

    torch.save(tv.state_dict(), folder / "tv.pth")
    convert_weights.main(
        [
            "--from",
            "torchvision",
            "--config",
            str(ROOT / "configs/frcnn_r50_fpn_coco.yaml"),
            str(folder / "tv.pth"),
            str(folder / "detkit.pth"),
        ]
    )
    return folder / "detkit.pth"


def photo_paths():
    return [
        reference_data("faster_coco_eval/tests/dataset/img_1.jpg"),  # 256x256 -> upscaled to 800
        reference_data("exif-orientation-examples/Landscape_1.jpg"),  # 1800x1200 -> 800x1200
        reference_data("mmcv/tests/data/color.jpg"),
    ]


def as_torchvision_input(img):
    return torch.from_numpy(img).permute(2, 0, 1).float() / 255


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tv = make_torchvision_model()
    return tv, convert(tv, tmp_path_factory.mktemp("parity"))


@pytest.fixture(scope="module")
def converted_calibrated(tmp_path_factory):
    photos = [as_torchvision_input(read_rgb(p)) for p in photo_paths()]
    tv = make_torchvision_model(calibrate_on=photos)
    return tv, convert(tv, tmp_path_factory.mktemp("parity_calibrated"))


def torchvision_match(tv, det) -> float:
    """Fraction of torchvision's detections on the three photos that ``det`` matches."""
    total, matched = 0, 0.0
    for path in photo_paths():
        img = read_rgb(path)
        with torch.no_grad():
            ref = tv([as_torchvision_input(img)])[0]
        out = det.predict([img])[0]
        assert len(ref["boxes"]) > 10, "the reference model should produce detections to compare"
        frac = match_fraction(ref, out)
        matched += frac * len(ref["boxes"])
        total += len(ref["boxes"])
        assert out["boxes"].shape[1] == 4 and out["boxes"][:, 2:].max() <= max(img.shape[:2]) + 1e-3
    return matched / total


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
