"""Iterative box refinement in the RoI heads, and the box voting it (and the merge) uses."""

import torch

from detkit.modeling.roi_heads import box_voting, nms_and_vote
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


def test_refinement_repools_at_regressed_boxes():
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
    s = {k: v for k, v in sample().items() if not k.startswith("gt_")}
    out = model([s])[0]
    assert len(pooled) == 2  # proposals, then the regressed boxes
    proposals, second = pooled[0][0], pooled[1][0]
    logits, deltas = model.roi_heads.predictor(
        original(model.preprocess([s]), model.extract_features(model.preprocess([s])), [proposals])
    )
    ((boxes, scores),) = model.roi_heads.decode(
        logits, deltas, [proposals], [tuple(s["image"].shape[-2:])]
    )
    expected = boxes[torch.arange(len(boxes)), scores.argmax(1)]
    assert torch.allclose(second, expected, atol=1e-4)
    assert not torch.allclose(second, proposals, atol=1e-2)
    assert len(out["boxes"]) > 0
