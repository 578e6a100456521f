"""detkit.layers against torchvision's operators: the same kept boxes in the same order (the traced
per-group NMS of an export included), the same pooled features."""

from collections import OrderedDict

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import batched_nms as torchvision_batched_nms

from detkit.layers import batched_nms
from detkit.modeling.poolers import ROIAlign


def boxes_scores_groups(n, groups, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 400
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 120 + 1], 1)
    scores = torch.rand(n, generator=g)
    scores[::5] = 0.5  # ties
    return boxes, scores, torch.randint(0, groups, (n,), generator=g)


@pytest.mark.parametrize("n,groups", [(1500, 4), (3000, 80), (2000, 1), (300, 3)])
def test_batched_nms_eager_and_traced_keep_torchvisions_boxes(n, groups):
    """Eagerly torchvision's batched_nms, ties in its order; traced (export), one NMS per group,
    whose graph must make the same decisions for inputs other than the one it was traced with."""
    boxes, scores, labels = boxes_scores_groups(n, groups, seed=n + groups)
    expected = torchvision_batched_nms(boxes, scores, labels, 0.5)
    assert 0 < len(expected) < n
    assert torch.equal(batched_nms(boxes, scores, labels, 0.5, groups), expected)

    def nms_of(b, s, lab):
        return batched_nms(b, s, lab, 0.5, groups)

    traced = torch.jit.trace(nms_of, (boxes[:100], scores[:100], labels[:100]), check_trace=False)
    kept = traced(boxes, scores, labels)
    # the same boxes by descending score; boxes of equal score may come in another order
    assert sorted(kept.tolist()) == sorted(expected.tolist())
    assert torch.equal(scores[kept], scores[expected])


def test_batched_nms_needs_the_group_count_while_tracing():
    boxes, scores, labels = boxes_scores_groups(10, 2, seed=0)
    with pytest.raises(ValueError, match="num_groups"):
        torch.jit.trace(lambda b, s, lab: batched_nms(b, s, lab, 0.5), (boxes, scores, labels))


@pytest.mark.parametrize("channels_last", [False, True])
def test_roi_align_pooler_equals_torchvisions_multiscale_roi_align(channels_last):
    g = torch.Generator().manual_seed(0)
    names = ["p2", "p3", "p4", "p5"]
    feats = [torch.randn(2, 8, 256 // s, 384 // s, generator=g) for s in (4, 8, 16, 32)]
    if channels_last:  # the eager CPU predictor's layout
        feats = [f.contiguous(memory_format=torch.channels_last) for f in feats]
    xy = torch.rand(150, 2, generator=g) * torch.tensor([300.0, 200.0])
    wh = torch.rand(150, 2, generator=g) * 250 + 1
    boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([384.0, 256.0]))], 1)
    per_image = [boxes[:50], boxes[50:]]
    reference = MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2)
    expected = reference(OrderedDict(zip(names, feats)), per_image, [(256, 384)] * 2)
    pooler = ROIAlign(output_size=7, sampling_ratio=2, in_strides=(4, 8, 16, 32))
    with torch.inference_mode():
        ours = pooler(feats, per_image, (256, 384))
    assert ours.shape == (150, 8, 7, 7) and ours.abs().sum() > 0
    assert torch.equal(ours, expected)
