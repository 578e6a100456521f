"""configs/torchvision/fasterrcnn_resnet50_fpn_v2.yaml must give torchvision's
fasterrcnn_resnet50_fpn_v2 detections on real photos.

torchvision's v2 model (BatchNorm2d in backbone, FPN and box head, evaluated in eval mode with its
running statistics; two-conv RPN head; 4-conv + 1-fc box head) gets seeded random weights, no
download. Random BN statistics would let activations grow block after block, so each BN's running
statistics are set from the input it sees on a calibration photo (as a trained network's are), and
the predictor's weights are spread so that scores are well separated (near-ties would make the
comparison depend on float rounding). The state dict is converted by tools/convert_weights.py,
loaded by Detector.from_checkpoint and run through Detector.predict. Criterion: >= 99% of
torchvision's detections have a detkit detection with the same label (torchvision label - 1),
IoU >= 0.99 and |score difference| <= 1e-3, one image at a time and as a batch.

Small test size and 100 proposals (the 4-conv box head runs on every proposal) on both sides keep
it fast; neither changes what is compared.
"""

import sys

import cv2
import pytest
import torch
from torch import nn
from torchvision.models.detection import fasterrcnn_resnet50_fpn_v2

from tests.helpers import ROOT, reference_data
from tests.modeling.torchvision_reference import match_fraction

sys.path.insert(0, str(ROOT / "tools"))

CONFIG = ROOT / "configs/torchvision/fasterrcnn_resnet50_fpn_v2.yaml"
MIN_SIZE, MAX_SIZE, PROPOSALS = 320, 1333, 100
OVERRIDES = [
    f"input.min_size_test={MIN_SIZE}",
    f"input.max_size_test={MAX_SIZE}",
    f"model.rpn.post_nms_topk_test={PROPOSALS}",
]
PHOTOS = [
    "faster_coco_eval/tests/dataset/img_1.jpg",  # 256x256, upscaled
    "exif-orientation-examples/Landscape_1.jpg",  # 1800x1200 -> 480x320
    "mmcv/tests/data/color.jpg",
]


def read_rgb(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def to_tv(img):
    return torch.from_numpy(img).permute(2, 0, 1).float() / 255


@torch.no_grad()
def randomize(model, calib_rgbs, seed=0):
    """BN affine random, BN statistics from calibration photos, predictor weights spread."""
    g = torch.Generator().manual_seed(seed)
    hooks, seen = [], {}

    def set_stats(bn, args):
        x = args[0].float()
        bn.running_mean.copy_(x.mean((0, 2, 3)))
        bn.running_var.copy_(x.var((0, 2, 3)).clamp(min=1e-2) - bn.eps)

    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            # the last BN of a residual branch small, so the sums do not grow block after block
            lo, hi = (0.2, 0.5) if name.endswith("bn3") else (0.5, 1.5)
            m.weight.copy_(torch.rand(n, generator=g) * (hi - lo) + lo)
            m.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
            hooks.append(m.register_forward_pre_hook(set_stats))
    predictor = model.roi_heads.box_predictor
    hooks.append(predictor.register_forward_pre_hook(lambda _, a: seen.update(x=a[0])))
    # one forward of the batch: hooks fire in order, each BN sees already-calibrated inputs
    model.eval()([to_tv(img) for img in calib_rgbs])
    for h in hooks:
        h.remove()
    x = seen["x"]
    rms, dim = x.pow(2).mean().sqrt().item(), x.shape[1]
    w = predictor.cls_score.weight
    w.copy_(torch.randn(w.shape, generator=g) * 1.5 / (rms * dim**0.5))
    predictor.cls_score.bias.copy_(torch.randn(w.shape[0], generator=g) * 0.5)
    w = predictor.bbox_pred.weight
    w.copy_(torch.randn(w.shape, generator=g) / (rms * dim**0.5))
    predictor.bbox_pred.bias.zero_()
    return model


@pytest.fixture(scope="module")
def photos():
    return [read_rgb(reference_data(p)) for p in PHOTOS]


@pytest.fixture(scope="module")
def converted(tmp_path_factory, photos):
    import convert_weights

    torch.manual_seed(0)
    tv = fasterrcnn_resnet50_fpn_v2(
        weights=None,
        weights_backbone=None,
        num_classes=91,
        min_size=MIN_SIZE,
        max_size=MAX_SIZE,
        rpn_post_nms_top_n_test=PROPOSALS,
    )
    randomize(tv, photos)
    d = tmp_path_factory.mktemp("parity_v2")
    torch.save(tv.state_dict(), d / "tv_v2.pth")
    rc = convert_weights.main(
        ["--from", "torchvision", "--config", str(CONFIG), str(d / "tv_v2.pth"), str(d / "v2.pth")]
    )
    assert rc == 0
    return tv, d / "v2.pth"


@pytest.fixture(scope="module")
def tv_state():
    """A v2 state dict as torchvision initialises it (layout checks need no calibrated weights)."""
    torch.manual_seed(0)
    return fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None).state_dict()


def _check(ref, out, img):
    assert len(ref["boxes"]) > 10, "the reference model should produce detections to compare"
    assert ref["scores"].max() - ref["scores"].min() > 0.1, "reference scores are too close"
    assert out["boxes"].shape[1] == 4 and out["boxes"][:, 2:].max() <= max(img.shape[:2]) + 1e-3
    return match_fraction(ref, out), len(ref["boxes"])


@pytest.mark.slow
def test_v2_matches_torchvision_one_image_and_batch(converted, photos):
    from detkit import Detector

    tv, ckpt = converted
    det = Detector.from_checkpoint(str(ckpt), overrides=OVERRIDES)
    assert det.class_names[0] == "person" and len(det.class_names) == 90
    with torch.no_grad():
        refs = [tv([to_tv(img)])[0] for img in photos]
        refs_batch = tv([to_tv(img) for img in photos])
    outs = [det.predict([img])[0] for img in photos]
    # several images per call on the CPU run side by side (test.parallel_images), each alone:
    # torchvision's one-image detections, whatever the batch
    outs_side_by_side = det.predict(photos, batch_size=len(photos))
    # one padded batch through the network: torchvision's batch
    batched = Detector(det.model, det.cfg.with_overrides(["test.parallel_images=1"]))
    outs_batch = batched.predict(photos, batch_size=len(photos))
    for mode, r, o in (
        ("single", refs, outs),
        ("side by side", refs, outs_side_by_side),
        ("batch", refs_batch, outs_batch),
    ):
        matched, total = 0.0, 0
        for ref, out, img in zip(r, o, photos):
            frac, n = _check(ref, out, img)
            matched, total = matched + frac * n, total + n
        assert matched / total >= 0.99, (
            f"{mode}: only {matched / total:.4f} of torchvision's {total} detections matched"
        )


def test_v2_architecture_identical_to_torchvision(tv_state):
    """Every torchvision tensor has a detkit counterpart of the same shape and vice versa
    (except the BN counters of the frozen stem and res2, whose FrozenBN has none)."""
    from detkit.checkpoint.torchvision_names import (
        torchvision_detector_to_detkit,
        torchvision_variant,
    )
    from detkit.config import load_config
    from detkit.modeling import build_model

    assert torchvision_variant(tv_state) == "v2"
    model = build_model(load_config(CONFIG, ["model.num_classes=90"]))
    own = model.state_dict()
    state = torchvision_detector_to_detkit(tv_state)
    assert "rpn.head.convs.1.weight" in state and "roi_heads.box_head.fcs.0.weight" in state
    unused = {k for k in state if k not in own}
    assert unused and all(k.endswith("num_batches_tracked") for k in unused)
    assert all(k.startswith(("backbone.bn1.", "backbone.layer1.")) for k in unused)
    assert set(own) <= set(state)
    assert all(state[k].shape == own[k].shape for k in own)


@pytest.mark.slow
def test_v2_converted_file_carries_its_classes(converted):
    """The converted file rebuilds the detector from its own config and from the v2 config file,
    without a num_classes override."""
    from detkit import Detector

    _, ckpt = converted
    a = Detector.from_checkpoint(str(ckpt))
    b = Detector.from_config(str(CONFIG), weights=str(ckpt))
    assert a.class_names == b.class_names and len(a.class_names) == 90
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_v2_file_with_v1_config_names_the_v2_config(tv_state, tmp_path, capsys):
    import convert_weights

    torch.save(tv_state, tmp_path / "tv_v2.pth")
    v1 = ROOT / "configs/torchvision/fasterrcnn_resnet50_fpn.yaml"
    argv = ["--from", "torchvision", "--config", str(v1), str(tmp_path / "tv_v2.pth")]
    assert convert_weights.main([*argv, str(tmp_path / "out.pth")]) == 1
    err = capsys.readouterr().err
    assert "torchvision v2 layout" in err and "fasterrcnn_resnet50_fpn_v2.yaml" in err
    assert "neck.lateral_norms.0.weight" in err  # an unexpected tensor is named
    assert not (tmp_path / "out.pth").exists()
