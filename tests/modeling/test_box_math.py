"""Exact math: IoU, box coding, anchors, matcher, sampler."""

import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList as TVImageList

from detkit.modeling.anchor_generator import AnchorGenerator, cell_anchors
from detkit.modeling.matcher import BACKGROUND, FOREGROUND, IGNORE, Matcher
from detkit.modeling.sampler import sample_balanced
from detkit.structures import BoxCoder, ImageList, box_iou, clip_boxes, nonempty


def test_iou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 5.0, 15.0, 15.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    assert torch.allclose(box_iou(a, b), torch.tensor([[25.0 / 175.0, 1.0, 0.0]]))


def test_encode_decode_round_trip_and_known_values():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    ref = torch.tensor([[0.0, 0.0, 10.0, 20.0], [5.0, 5.0, 7.0, 9.0]])
    tgt = torch.tensor([[1.0, 2.0, 12.0, 18.0], [4.0, 6.0, 9.0, 8.0]])
    deltas = coder.encode(ref, tgt)
    # ref 0: w=10 h=20 c=(5,10); tgt 0: w=11 h=16 c=(6.5,10)
    expected0 = torch.tensor([10 * 1.5 / 10, 0.0, 5 * math.log(11 / 10), 5 * math.log(16 / 20)])
    assert torch.allclose(deltas[0], expected0, atol=1e-6)
    assert torch.allclose(coder.decode(deltas, ref), tgt, atol=1e-5)


def test_decode_clamps_huge_scales():
    coder = BoxCoder()
    out = coder.decode(
        torch.tensor([[0.0, 0.0, 100.0, 100.0]]), torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    )
    assert torch.isfinite(out).all() and (out[0, 2] - out[0, 0]).item() == pytest.approx(
        1000.0, rel=1e-4
    )


def test_clip_and_nonempty():
    boxes = torch.tensor([[-5.0, -5.0, 50.0, 50.0], [10.0, 10.0, 10.0005, 20.0]])
    assert clip_boxes(boxes, (40, 30)).tolist()[0] == [0.0, 0.0, 30.0, 40.0]
    assert nonempty(boxes, 1e-3).tolist() == [0]


def test_cell_anchors_hand_computed():
    # ratio 1, size 32 -> [-16, -16, 16, 16]; ratio 0.5 (h/w) -> w = 32 * sqrt(2), h = 32 / sqrt(2)
    a = cell_anchors([32], [0.5, 1.0])
    assert a[1].tolist() == [-16.0, -16.0, 16.0, 16.0]
    assert a[0].tolist() == [-23.0, -11.0, 23.0, 11.0]


def test_anchors_equal_torchvision_including_odd_top_level():
    sizes, ratios = ((32,), (64,), (128,), (256,), (512,)), (0.5, 1.0, 2.0)
    tv = TVAnchorGenerator(sizes, (ratios,) * 5)
    grids = [(200, 304), (100, 152), (50, 76), (25, 38), (13, 19)]  # P6 of an 800x1216 input
    feats = [torch.zeros(1, 1, *g) for g in grids]
    expected = tv(TVImageList(torch.zeros(1, 3, 800, 1216), [(800, 1216)]), feats)[0]
    ours = torch.cat(AnchorGenerator([list(s) for s in sizes], ratios)(grids, (800, 1216), "cpu"))
    assert torch.equal(ours, expected)


def test_anchors_stay_torchvisions_past_the_cache_and_in_training_after_inference():
    """More image sizes than the cache keeps, twice over: every call still gets torchvision's
    anchors for its size; anchors made under inference_mode are not handed to a training step
    (autograd cannot save inference tensors)."""
    sizes, ratios = ((32,), (64,)), (0.5, 1.0, 2.0)
    tv = TVAnchorGenerator(sizes, (ratios,) * 2)
    ours = AnchorGenerator([list(s) for s in sizes], ratios)
    images = [(64 + 32 * (i // 9), 64 + 32 * (i % 9)) for i in range(80)]
    for h, w in images + images[::-1]:
        grids = [(h // 4, w // 4), (h // 8, w // 8)]
        feats = [torch.zeros(1, 1, *g) for g in grids]
        expected = tv(TVImageList(torch.zeros(1, 3, h, w), [(h, w)]), feats)[0]
        assert torch.equal(torch.cat(ours(grids, (h, w), "cpu")), expected), (h, w)
    grids = [(16, 16), (8, 8)]
    with torch.inference_mode():
        assert all(a.is_inference() for a in ours(grids, (64, 64), "cpu"))
    assert not any(a.is_inference() for a in ours(grids, (64, 64), "cpu"))


def test_matcher_thresholds_and_ignore():
    iou = torch.tensor([[0.8, 0.5, 0.2, 0.0]])
    matched, labels = Matcher(0.7, 0.3)(iou)
    assert labels.tolist() == [FOREGROUND, IGNORE, BACKGROUND, BACKGROUND]


def test_matcher_low_quality_matches_with_ties():
    # GT 1 has no prediction above 0.7; its best IoU 0.4 is shared by predictions 1 and 2 (a tie)
    iou = torch.tensor([[0.9, 0.1, 0.1, 0.0], [0.1, 0.4, 0.4, 0.2]])
    matched, labels = Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou)
    assert labels.tolist() == [FOREGROUND, FOREGROUND, FOREGROUND, BACKGROUND]
    assert matched.tolist()[:3] == [0, 1, 1]
    _, labels_plain = Matcher(0.7, 0.3)(iou)
    assert labels_plain.tolist() == [FOREGROUND, IGNORE, IGNORE, BACKGROUND]


def test_matcher_without_gt_is_all_background():
    matched, labels = Matcher(0.5, 0.5)(torch.zeros(0, 5))
    assert labels.tolist() == [BACKGROUND] * 5


def test_sampler_counts():
    torch.manual_seed(0)
    labels = torch.tensor([1] * 10 + [0] * 1000 + [-1] * 50)
    pos, neg = sample_balanced(labels, 256, 0.5)
    assert len(pos) == 10 and len(neg) == 246
    assert (labels[pos] == 1).all() and (labels[neg] == 0).all()
    labels = torch.tensor([1] * 500 + [0] * 1000)
    pos, neg = sample_balanced(labels, 256, 0.25)
    assert (len(pos), len(neg)) == (64, 192) and len(set(pos.tolist())) == 64
    pos, neg = sample_balanced(torch.tensor([0] * 3 + [-1] * 3), 256, 0.5)
    assert (len(pos), len(neg)) == (0, 3)


def test_image_list_padding():
    il = ImageList.from_tensors([torch.ones(3, 10, 20), torch.ones(3, 33, 5)], 32)
    assert il.tensor.shape == (2, 3, 64, 32) and il.image_sizes == [(10, 20), (33, 5)]
    assert il.tensor[0, :, 10:].abs().sum() == 0
