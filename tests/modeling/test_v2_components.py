"""The parts torchvision's fasterrcnn_resnet50_fpn_v2 adds: a normalised FPN, a deeper RPN head and
the conv + fc box head. Their parity with torchvision is in test_torchvision_v2_parity.py; here:
names, shapes, training and the unchanged single-conv / plain-FPN layouts."""

import pytest
import torch
from torch import nn

from detkit.modeling.backbones import FPN
from detkit.modeling.backbones.norm import FrozenBatchNorm2d
from detkit.modeling.box_heads import ConvFCHead
from detkit.modeling.rpn import RPNHead
from tests.helpers import tiny_config


def _fpn(norm):
    return FPN(in_channels={"res2": 8, "res3": 16}, in_strides={"res2": 4, "res3": 8}, norm=norm)


def test_plain_fpn_keeps_its_names_and_biases():
    keys = set(_fpn("").state_dict())
    assert keys == {
        f"{kind}_convs.{i}.{p}"
        for kind in ("lateral", "output")
        for i in (0, 1)
        for p in ("weight", "bias")
    }


def test_fpn_norm_follows_every_conv_without_bias():
    fpn = _fpn("BN")
    assert all(c.bias is None for c in (*fpn.lateral_convs, *fpn.output_convs))
    assert all(isinstance(n, nn.BatchNorm2d) for n in (*fpn.lateral_norms, *fpn.output_norms))
    out = fpn({"res2": torch.randn(2, 8, 16, 16), "res3": torch.randn(2, 16, 8, 8)})
    assert [tuple(v.shape) for v in out.values()] == [
        (2, 256, 16, 16),
        (2, 256, 8, 8),
        (2, 256, 4, 4),
    ]
    # in eval mode BN uses its running statistics: shifting them shifts the output
    fpn.eval()
    x = {"res2": torch.randn(1, 8, 16, 16), "res3": torch.randn(1, 16, 8, 8)}
    norm = fpn.output_norms[1]
    norm.running_mean.zero_()
    norm.running_var.fill_(1.0 - norm.eps)
    before = fpn(x)["p3"]
    norm.running_mean.fill_(1.0)
    assert torch.allclose(fpn(x)["p3"], before - 1.0, atol=1e-5)


def test_fpn_rejects_unknown_norm():
    with pytest.raises(ValueError, match="valid: '' \\(none\\), FrozenBN, BN"):
        _fpn("LayerNorm")


def test_rpn_head_conv_names():
    assert {k.split(".")[0] for k in RPNHead(in_channels=8, num_anchors=3).state_dict()} == {
        "conv",
        "objectness",
        "deltas",
    }
    head = RPNHead(in_channels=8, num_anchors=3, num_convs=2)
    assert "convs.1.weight" in head.state_dict() and not hasattr(head, "conv")
    logits, deltas = head([torch.randn(1, 8, 5, 5), torch.randn(1, 8, 3, 3)])
    assert logits[1].shape == (1, 3, 3, 3) and deltas[0].shape == (1, 12, 5, 5)
    with pytest.raises(ValueError, match="num_convs >= 1"):
        RPNHead(in_channels=8, num_anchors=3, num_convs=0)


def test_rpn_head_second_conv_is_used():
    head = RPNHead(in_channels=8, num_anchors=3, num_convs=2)
    x = [torch.randn(1, 8, 5, 5)]
    before = head(x)[0][0].clone()
    with torch.no_grad():
        head.convs[1].bias.fill_(1.0)
    assert not torch.allclose(head(x)[0][0], before)


def test_conv_fc_head_shapes_names_and_training():
    head = ConvFCHead(in_channels=8, pooler_size=7, conv_dims=[16, 16], fc_dims=[32])
    assert set(head.state_dict()) >= {"convs.1.weight", "norms.1.running_var", "fcs.0.bias"}
    assert all(c.bias is None for c in head.convs) and head.out_channels == 32
    x = torch.randn(4, 8, 7, 7)
    y = head(x)
    assert y.shape == (4, 32)
    y.sum().backward()
    assert all(p.grad is not None for p in head.parameters())


def test_conv_fc_head_without_norm_has_biases():
    head = ConvFCHead(in_channels=8, pooler_size=3, conv_dims=[4], fc_dims=[], norm="")
    assert len(head.norms) == 0 and head.convs[0].bias is not None
    assert head(torch.randn(2, 8, 3, 3)).shape == (2, head.out_channels) == (2, 4 * 3 * 3)


def test_v2_pieces_build_from_config():
    import numpy as np

    from detkit import Detector

    cfg = tiny_config(
        "model.neck.norm=BN",
        "model.rpn.num_convs=2",
        "model.roi_heads.box_head.name=ConvFCHead",
        "model.roi_heads.box_head.conv_dims=[32, 32]",
        "model.roi_heads.box_head.fc_dims=[64]",
    )
    det = Detector.from_config(cfg)
    model = det.model
    assert isinstance(model.roi_heads.box_head, ConvFCHead)
    assert len(model.rpn.head.convs) == 2 and len(model.neck.output_norms) > 0
    img = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    assert det.predict([img])[0]["boxes"].shape[1] == 4


def test_frozen_stage_turns_bn_into_frozen_bn_with_same_function():
    """v2 keeps stem + res2 frozen: freezing must not change the function of a BN in eval mode."""
    from detkit.modeling.backbones.norm import freeze_module

    bn = nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    holder = nn.Sequential(bn)
    x = torch.randn(2, 4, 3, 3)
    expected = bn(x)
    freeze_module(holder)
    assert isinstance(holder[0], FrozenBatchNorm2d)
    assert torch.allclose(holder[0](x), expected, atol=1e-6)
