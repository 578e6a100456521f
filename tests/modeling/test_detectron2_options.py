"""The component options detectron2's models need (issue 13): ResNet/ResNeXt/DC5 backbones that
train, unrounded size-major anchors at fixed strides, strict RPN size filter and logit NMS, the
pooler's strides and level rule, BGR + (x - mean) / std input, PIL resize with round-half-up sizes,
clipped postprocess -- and the configs/detectron2 files that combine them. End-to-end parity with
detectron2 itself lives in tests/modeling/test_detectron2_parity.py."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import roi_align

from detkit.config import load_config
from detkit.modeling.anchor_generator import AnchorGenerator, cell_anchors
from detkit.modeling.backbones import ResNet
from detkit.modeling.box_heads import Res5Head
from detkit.modeling.detector import pil_resize
from detkit.modeling.poolers import ROIAlign
from detkit.structures.resize import resize_size

ROOT = Path(__file__).resolve().parents[2]


# -- backbone options ---------------------------------------------------------------------------
def _train_step(net: torch.nn.Module, x: torch.Tensor) -> dict:
    out = net(x)
    sum(o.square().mean() for o in out.values()).backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    return out


@pytest.mark.slow
def test_stride_in_1x1_moves_the_stride_to_the_first_conv():
    net = ResNet(depth=50, norm="BN", freeze_at=0, stride_in_1x1=True)
    first = net.layer2[0]
    assert first.conv1.stride == (2, 2) and first.conv2.stride == (1, 1)
    assert first.downsample[0].stride == (2, 2)
    out = _train_step(net, torch.randn(2, 3, 64, 96))
    assert out["res5"].shape == (2, 2048, 2, 3)
    default = ResNet(depth=50, freeze_at=0).layer2[0]
    assert default.conv1.stride == (1, 1) and default.conv2.stride == (2, 2)


@pytest.mark.slow
def test_resnext_groups_and_width_train():
    net = ResNet(depth=50, norm="BN", freeze_at=0, num_groups=4, width_per_group=8)
    assert net.layer1[0].conv2.groups == 4 and net.layer1[0].conv2.weight.shape == (32, 8, 3, 3)
    assert net.layer4[0].conv2.weight.shape == (256, 64, 3, 3)  # 4 * 8 * 2**3 wide
    out = _train_step(net, torch.randn(2, 3, 64, 64))
    assert {k: v.shape[1] for k, v in out.items()} == net.out_channels
    assert net.out_channels == {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}


@pytest.mark.slow
def test_res5_dilation_keeps_stride_16_and_dilates_every_res5_block():
    net = ResNet(depth=50, norm="BN", freeze_at=0, out_features=["res5"], res5_dilation=2)
    assert net.strides == {"res5": 16}
    assert all(b.conv2.dilation == (2, 2) and b.conv2.padding == (2, 2) for b in net.layer4)
    assert net.layer4[0].downsample[0].stride == (1, 1)
    out = _train_step(net, torch.randn(1, 3, 64, 96))
    assert out["res5"].shape == (1, 2048, 4, 6)  # 64x96 / 16


@pytest.mark.parametrize(
    "kwargs",
    [
        {"depth": 18, "num_groups": 32},
        {"depth": 34, "stride_in_1x1": True},
        {"depth": 50, "out_features": ["res4"], "res5_dilation": 2},
        {"depth": 50, "res5_dilation": 3},
    ],
)
def test_backbone_option_errors(kwargs):
    with pytest.raises(ValueError, match="ResNet"):
        ResNet(**kwargs)


@pytest.mark.slow
def test_res5_head_takes_the_backbone_options():
    head = Res5Head(in_channels=1024, depth=50, stride_in_1x1=True, num_groups=2, width_per_group=8)
    assert head.res5[0].conv1.stride == (2, 2) and head.res5[0].conv2.groups == 2
    x = torch.randn(3, 1024, 14, 14, requires_grad=True)
    y = head(x)
    assert y.shape == (3, 2048)
    y.sum().backward()
    assert x.grad is not None


# -- anchors ------------------------------------------------------------------------------------
def test_unrounded_size_major_cell_anchors_are_detectron2s():
    a = cell_anchors([32, 64], [0.5, 1.0, 2.0], rounded=False, order="size_major")
    half = math.sqrt(2048) / 2  # size 32, ratio 0.5: w = sqrt(32^2 / 0.5), h = 0.5 w
    expected = torch.tensor(
        [[-half, -half / 2, half, half / 2], [-16, -16, 16, 16], [-half / 2, -half, half / 2, half]]
    )
    torch.testing.assert_close(a[:3], expected, rtol=0, atol=1e-5)
    # then size 64 (size-major), computed in doubles and cast once
    assert a[3].tolist() == torch.tensor([-2 * half, -half, 2 * half, half]).tolist()
    rounded = cell_anchors([32, 64], [0.5, 1.0, 2.0])  # torchvision: ratio-major, whole pixels
    assert rounded[0].tolist() == [-23.0, -11.0, 23.0, 11.0] and rounded[1].tolist()[0] == -45.0


def test_fixed_strides_and_offset():
    # a 5x3 P6 grid of a 320x160 padded image: torchvision's rule gives stride 64 // ... = 64 and 53
    gen = AnchorGenerator([[32]], [1.0], strides=[64], offset=0.5)
    (anchors,) = gen([(5, 3)], (320, 160), "cpu")
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    assert centres[:3, 0].tolist() == [32.0, 96.0, 160.0] and centres[3, 1].item() == 96.0
    (tv,) = AnchorGenerator([[32]], [1.0])([(5, 3)], (320, 160), "cpu")
    assert ((tv[:, :2] + tv[:, 2:]) / 2)[1, 0].item() == 53.0  # 160 // 3


# -- resize -------------------------------------------------------------------------------------
def test_resize_size_rounding():
    assert resize_size(2, 3, 3, 100, "floor") == (3, 4)
    assert resize_size(2, 3, 3, 100, "round") == (3, 5)  # 4.5 rounds half up
    # capped: detectron2 rescales the already-scaled sides (800 x 8000 -> x 1333/8000)
    assert resize_size(100, 1000, 800, 1333, "round") == (133, 1333)
    assert resize_size(1200, 1800, 320, 1333, "round") == (320, 480)
    with pytest.raises(ValueError, match="round"):
        resize_size(1, 1, 1, 1, "ceil")


def test_pil_resize_is_pils_bilinear():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    ours = pil_resize(torch.from_numpy(rgb.transpose(2, 0, 1).copy()), (20, 29))
    ref = np.asarray(Image.fromarray(rgb).resize((29, 20), Image.BILINEAR))
    assert ours.dtype == torch.uint8 and np.array_equal(ours.numpy().transpose(1, 2, 0), ref)


# -- pooler -------------------------------------------------------------------------------------
def test_pooler_uses_the_given_stride_on_unpadded_small_images():
    feature = torch.randn(1, 4, 3, 3)  # res4 of a 33x33 image: 3/33 would infer stride 8
    box = torch.tensor([[2.0, 3.0, 30.0, 31.0]])
    pooler = ROIAlign(output_size=2, sampling_ratio=0, aligned=True, in_strides=[16])
    expected = roi_align(feature, [box], (2, 2), 1 / 16, 0, True)
    torch.testing.assert_close(pooler([feature], [box], (33, 33)), expected, rtol=0, atol=0)


def test_level_eps_placement_decides_a_box_just_below_a_level_boundary():
    feats = [torch.full((1, 1, 64 >> i, 64 >> i), float(i)) for i in range(4)]  # p2..p5
    # log2(side / 224) is about -6e-7: level 4 with torchvision's eps after the log, level 3 with
    # detectron2's (its 1e-8 inside the log is below float32's resolution there)
    side = 224.0 - 6 * 2.0**-16
    box = torch.tensor([[0.0, 0.0, side, side]])
    tv = ROIAlign(output_size=1, in_strides=[4, 8, 16, 32])
    d2 = ROIAlign(output_size=1, level_eps=0.0, level_eps_in_log=1e-8, in_strides=[4, 8, 16, 32])
    assert tv(feats, [box], (256, 256)).item() == 2.0  # p4
    assert d2(feats, [box], (256, 256)).item() == 1.0  # p3


# -- configs ------------------------------------------------------------------------------------
ZOO = sorted((ROOT / "configs" / "detectron2").glob("faster_rcnn_*.yaml"))


def test_every_zoo_model_has_a_config():
    names = {p.stem for p in ZOO}
    expected = {f"faster_rcnn_R_{d}_{k}" for d, k in [(50, "C4_1x"), (50, "C4_3x"), (50, "DC5_1x")]}
    expected |= {"faster_rcnn_R_50_DC5_3x", "faster_rcnn_R_50_FPN_1x", "faster_rcnn_R_50_FPN_3x"}
    expected |= {"faster_rcnn_R_101_C4_3x", "faster_rcnn_R_101_DC5_3x", "faster_rcnn_R_101_FPN_3x"}
    expected |= {"faster_rcnn_X_101_32x8d_FPN_3x", "faster_rcnn_R_50_C4"}
    assert names == expected


@pytest.mark.parametrize("path", ZOO, ids=[p.stem for p in ZOO])
def test_zoo_configs_set_detectron2s_inference(path):
    cfg = load_config(path)
    m = cfg.model
    assert (m.input_format, m.pixel_divisor, m.resize_interpolation) == ("BGR", 1.0, "pil_bilinear")
    assert m.rescale_clip and m.rescale_drop_empty and cfg.input.resize_rounding == "round"
    assert (m.rpn.anchor_rounded, m.rpn.anchor_order, m.rpn.nms_score) == (
        False,
        "size_major",
        "logit",
    )
    assert m.rpn.min_size == 0.0 and m.rpn.min_size_strict and m.roi_heads.min_size_test == 0.0
    p = m.roi_heads.pooler
    assert (p.name, p.aligned, p.sampling_ratio, p.level_eps, p.level_eps_in_log) == (
        "ROIAlign",
        True,
        0,
        0.0,
        1e-8,
    )
    fpn = "FPN" in path.stem
    assert m.size_divisibility == (32 if fpn else 0)
    assert m.rpn.anchor_strides == ([4, 8, 16, 32, 64] if fpn else [16])
    assert (m.rpn.pre_nms_topk_test, m.rpn.post_nms_topk_test) == (
        (1000, 1000) if fpn else (6000, 1000)
    )
    assert m.backbone.res5_dilation == (2 if "DC5" in path.stem else 1)
    assert m.backbone.stride_in_1x1 == ("X_101" not in path.stem)
    assert m.num_classes == (80 if path.stem.endswith(("1x", "3x")) else 20)
    assert m.backbone.depth == (50 if "_50_" in path.stem else 101)
