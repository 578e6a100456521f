"""torchvision's fasterrcnn_resnet50_fpn as the parity tests' reference: a seeded random model
(optionally calibrated on the photos), its conversion through tools/convert_weights.py, the photos,
and the fraction of its detections a detkit Detector matches (shared by
test_torchvision_parity.py, test_torchvision_v2_parity.py and test_inference_fast_path.py)."""

import sys

import cv2
import torch
import torchvision
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.misc import FrozenBatchNorm2d

from detkit.evaluation import parity
from tests.helpers import ROOT, reference_data

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


def match_fraction(ref, out, **criterion):
    """Fraction of torchvision's detections ``ref`` matched by detkit's ``out`` under the parity
    criterion (``detkit.evaluation.parity``); torchvision label i is detkit label i - 1."""
    return parity.match_fraction({**ref, "labels": ref["labels"] - 1}, out, **criterion)


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
