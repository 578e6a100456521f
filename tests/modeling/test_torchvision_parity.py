"""detkit's R50-FPN config must give torchvision's fasterrcnn_resnet50_fpn detections on real photos.

torchvision's model gets seeded random weights (frozen BN with random statistics, as a pretrained
model has; a small-std predictor so the boxes look like a real detector's), is converted with
tools/convert_weights.py, loaded through Detector.from_checkpoint and run through detkit's own
preprocessing. Criterion: >= 99% of torchvision's detections have a detkit detection with the same
label (torchvision label - 1), IoU >= 0.99 and |score difference| <= 1e-3.
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


def make_torchvision_model(seed=0):
    torch.manual_seed(seed)
    backbone = _resnet_fpn_extractor(torchvision.models.resnet50(norm_layer=FrozenBatchNorm2d), 3)
    model = FasterRCNN(backbone, num_classes=NUM_TV_CLASSES)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
        torch.nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight, std=0.001)
        torch.nn.init.normal_(model.roi_heads.box_predictor.bbox_pred.weight, std=0.01)
    return model.eval()


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


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    import convert_weights

    tv = make_torchvision_model()
    d = tmp_path_factory.mktemp("parity")
    torch.save(tv.state_dict(), d / "tv.pth")
    convert_weights.main(
        [
            "--from",
            "torchvision",
            "--config",
            str(ROOT / "configs/frcnn_r50_fpn_coco.yaml"),
            str(d / "tv.pth"),
            str(d / "detkit.pth"),
        ]
    )
    return tv, d / "detkit.pth"


@pytest.mark.slow
def test_converted_checkpoint_matches_torchvision_on_photos(converted):
    from detkit import Detector

    tv, ckpt = converted
    det = Detector.from_checkpoint(str(ckpt))
    assert det.class_names[0] == "person" and len(det.class_names) == 90
    photos = [
        reference_data("faster_coco_eval/tests/dataset/img_1.jpg"),  # 256x256 -> upscaled to 800
        reference_data("exif-orientation-examples/Landscape_1.jpg"),  # 1800x1200 -> 800x1200
        reference_data("mmcv/tests/data/color.jpg"),
    ]
    total, matched = 0, 0.0
    for path in photos:
        img = read_rgb(path)
        with torch.no_grad():
            ref = tv([torch.from_numpy(img).permute(2, 0, 1).float() / 255])[0]
        out = det.predict([img])[0]
        assert len(ref["boxes"]) > 10, "the reference model should produce detections to compare"
        frac = match_fraction(ref, out)
        matched += frac * len(ref["boxes"])
        total += len(ref["boxes"])
        assert out["boxes"].shape[1] == 4 and out["boxes"][:, 2:].max() <= max(img.shape[:2]) + 1e-3
    assert matched / total >= 0.99, (
        f"only {matched / total:.3f} of torchvision's detections matched"
    )


def test_architecture_identical_to_torchvision(converted):
    """Every torchvision tensor has a detkit counterpart of the same shape and vice versa."""
    from detkit.config import load_config
    from detkit.modeling import build_model
    from detkit.modeling.weights import torchvision_detector_to_detkit

    tv, _ = converted
    model = build_model(
        load_config(ROOT / "configs/frcnn_r50_fpn_coco.yaml", ["model.num_classes=90"])
    )
    converted_state = torchvision_detector_to_detkit(tv.state_dict())
    own = model.state_dict()
    assert set(converted_state) == set(own)
    assert all(converted_state[k].shape == own[k].shape for k in own)
