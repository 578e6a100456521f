"""Iterative box refinement in the RoI heads, and the box voting it (and the merge) uses."""

import pytest
import torch

from detkit.modeling.roi_heads import box_voting, nms_and_vote
from detkit.structures import ImageList
from tests.modeling.helpers import sample, tiny


def test_box_voting_is_score_weighted_mean():
    kept = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # itself, score 0.9
            [0.0, 0.0, 10.0, 11.0],  # IoU 100/110 = 0.909 >= 0.8, score 0.6
            [5.0, 5.0, 15.0, 15.0],
        ]
    )  # IoU 0.14 < 0.8: does not vote
    scores = torch.tensor([0.9, 0.6, 0.99])
    voted = box_voting(kept, boxes, scores, 0.8)
    assert torch.allclose(voted, torch.tensor([[0.0, 0.0, 10.0, (0.9 * 10 + 0.6 * 11) / 1.5]]))


def test_nms_and_vote_only_votes_within_class():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 11.0], [0.0, 0.0, 10.0, 12.0]])
    scores = torch.tensor([0.9, 0.6, 0.8])
    labels = torch.tensor([0, 0, 1])
    b, s, l = nms_and_vote(boxes, scores, labels, 0.3, 0.8, 100)
    assert l.tolist() == [0, 1] and s.tolist() == [scores[0].item(), scores[2].item()]
    assert (
        torch.allclose(b[1], boxes[2]) and abs(b[0, 3].item() - (0.9 * 10 + 0.6 * 11) / 1.5) < 1e-5
    )


class FixedPredictor(torch.nn.Module):
    """In the box predictor's place: the same logits and deltas for every region."""

    def __init__(self, logits, deltas):
        super().__init__()
        self.logits, self.deltas = logits, deltas

    def forward(self, x):
        return self.logits.expand(len(x), -1), self.deltas.expand(len(x), -1)


def test_refinement_repools_at_the_regressed_box_and_votes_the_union():
    """One region, three classes, worked by hand from the box coder's formulas (weights 10, 10, 5, 5:
    x centre += dx / 10 * width) and the rule: NMS at 0.3 per class on the union of both rounds,
    then each kept box is the score-weighted mean of its class's boxes at IoU >= 0.8."""
    heads = tiny(
        [
            "model.roi_heads.refine_iterations=1",
            "model.roi_heads.score_thresh_test=0.05",
            "model.roi_heads.refine_nms_thresh=0.3",
            "model.roi_heads.refine_vote_thresh=0.8",
        ]
    ).roi_heads.eval()
    assert tuple(heads.box_coder.weights) == (10.0, 10.0, 5.0, 5.0)
    pooled = []

    def region_features(images, features, boxes):
        pooled.append([b.tolist() for b in boxes])
        return torch.zeros(sum(len(b) for b in boxes), 1)

    heads.region_features = region_features
    # softmax of log(1, 2, 1, 1) over 3 classes + background: 0.2, 0.4, 0.2 (background 0.2)
    logits = torch.log(torch.tensor([[1.0, 2.0, 1.0, 1.0]]))
    deltas = torch.zeros(1, 12)
    deltas[0, 4] = 1.0  # class 1: dx = 1.0 / 10, the box moves right by 0.1 x 40 px = 4 px
    heads.predictor = FixedPredictor(logits, deltas)
    # the first round: class 1 scores best, so the region is re-pooled at its box
    first_boxes = torch.tensor(
        [[[0.0, 0.0, 20.0, 20.0], [10.0, 10.0, 50.0, 50.0], [60, 60, 90, 90]]]
    )
    first_scores = torch.tensor([[0.1, 0.6, 0.02]])
    images = ImageList(torch.zeros(1, 3, 100, 100), [(100, 100)])

    boxes, scores, labels = heads.refine(images, {}, [(first_boxes, first_scores)])[0]

    assert pooled == [[[[10.0, 10.0, 50.0, 50.0]]]]
    found = sorted(
        zip(labels.tolist(), scores.tolist(), boxes.tolist()), key=lambda d: (d[0], -d[1])
    )
    expected = [
        # class 0: round 2 [10, 10, 50, 50] (0.2) and round 1 [0, 0, 20, 20] (0.1) overlap at IoU
        # 100 / 1900 < 0.3: both kept, each votes only for itself
        (0, 0.2, [10.0, 10.0, 50.0, 50.0]),
        (0, 0.1, [0.0, 0.0, 20.0, 20.0]),
        # class 1: round 2 [14, 10, 54, 50] (0.4) against round 1 [10, 10, 50, 50] (0.6): IoU
        # 1440 / 1760 = 0.82, suppressed by NMS but voting: x1 = 0.6 * 10 + 0.4 * 14 = 11.6
        (1, 0.6, [11.6, 10.0, 51.6, 50.0]),
        # class 2: round 1 scored 0.02 < 0.05; round 2 [10, 10, 50, 50] (0.2)
        (2, 0.2, [10.0, 10.0, 50.0, 50.0]),
    ]
    assert [d[0] for d in found] == [e[0] for e in expected]
    for (_, score, box), (_, want_score, want_box) in zip(found, expected):
        assert score == pytest.approx(want_score, abs=1e-6)
        assert box == pytest.approx(want_box, abs=1e-4)


def test_refinement_in_the_model_pools_twice_and_detects():
    model = tiny(
        [
            "model.roi_heads.refine_iterations=1",
            "model.roi_heads.score_thresh_test=0.0",
            "model.rpn.post_nms_topk_test=20",
        ]
    ).eval()
    torch.nn.init.normal_(model.roi_heads.predictor.bbox_pred.weight, std=0.5)  # visible regression
    pooled = []
    original = model.roi_heads.region_features

    def spy(images, features, boxes):
        pooled.append([b.clone() for b in boxes])
        return original(images, features, boxes)

    model.roi_heads.region_features = spy
    with torch.no_grad():
        out = model([{k: v for k, v in sample().items() if not k.startswith("gt_")}])[0]
    assert len(pooled) == 2  # the proposals, then the regressed boxes
    assert pooled[1][0].shape == pooled[0][0].shape
    assert not torch.allclose(pooled[1][0], pooled[0][0], atol=1e-2)
    assert len(out["boxes"]) > 0
