"""Multi-scale and flip testing: mapping every pass back to the original image, and the merges."""

import pytest
import torch

from detkit.config import load_config
from detkit.errors import ConfigError
from detkit.modeling.roi_heads import nms_and_vote
from detkit.modeling.tta import MultiScaleFlip, hflip_boxes, soft_nms


def test_soft_nms_decays_instead_of_removing():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    b, s, l = soft_nms(boxes, scores, torch.zeros(3, dtype=torch.int64))
    iou = 90.0 / 110.0
    assert len(b) == 3
    assert torch.allclose(
        s, torch.tensor([0.9, 0.7, 0.8 * torch.exp(torch.tensor(-(iou**2) / 0.5)).item()])
    )


def test_hflip_boxes_is_its_own_inverse():
    boxes = torch.tensor([[3.0, 4.0, 20.0, 30.0]])
    assert hflip_boxes(boxes, 100).tolist() == [[80.0, 4.0, 97.0, 30.0]]
    assert torch.equal(hflip_boxes(hflip_boxes(boxes, 100), 100), boxes)


class BrightBoxDetector(torch.nn.Module):
    """A stand-in detector whose one detection is the bounding box of the bright pixels, found in the
    resized network input and mapped back like the real model does (exercises the TTA mapping)."""

    class_names = ["thing"]

    def forward(self, batch):
        outs = []
        for s in batch:
            img = s["image"].float()[None]
            scaled = torch.nn.functional.interpolate(img, scale_factor=s["scale"], mode="nearest")[
                0
            ]
            ys, xs = torch.where(scaled[0] > 128)
            sh, sw = scaled.shape[-2:]
            box = torch.tensor(
                [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32
            )
            box *= torch.tensor([s["width"] / sw, s["height"] / sh] * 2)
            outs.append({"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([0])})
        return outs


def test_flip_pass_undone_gives_unflipped_boxes():
    img = torch.zeros(3, 60, 100, dtype=torch.uint8)
    img[:, 10:30, 5:40] = 255
    s = {"image": img, "height": 60, "width": 100}
    plain = MultiScaleFlip(BrightBoxDetector(), scales=[60], max_size=1000)([s])[0]
    tta = MultiScaleFlip(BrightBoxDetector(), scales=[60], max_size=1000, flip=True)
    groups = tta.passes(s)
    outs = BrightBoxDetector()(groups[0])
    unflipped = hflip_boxes(outs[1]["boxes"], 100)
    assert plain["boxes"].tolist() == [[5.0, 10.0, 40.0, 30.0]]
    assert torch.allclose(unflipped, plain["boxes"]) and torch.allclose(
        outs[0]["boxes"], plain["boxes"]
    )
    merged = tta([s])[0]
    assert torch.allclose(merged["boxes"], plain["boxes"]) and len(merged["boxes"]) == 1


def test_multi_scale_maps_back_to_original_pixels():
    img = torch.zeros(3, 60, 100, dtype=torch.uint8)
    img[:, 10:30, 20:40] = 255
    s = {"image": img, "height": 60, "width": 100}
    for merge in ("nms", "soft_nms", "vote"):
        out = MultiScaleFlip(BrightBoxDetector(), scales=[30, 60, 120], max_size=1000, merge=merge)(
            [s]
        )[0]
        assert torch.allclose(out["boxes"][0], torch.tensor([20.0, 10.0, 40.0, 30.0]), atol=1.0)


def test_merging_a_prediction_set_with_itself_is_idempotent():
    torch.manual_seed(0)
    xy = torch.rand(40, 2) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(40, 2) * 40], dim=1)
    scores, labels = torch.rand(40), torch.randint(0, 3, (40,))
    b, s, l = nms_and_vote(boxes, scores, labels, 0.5, None, 100)
    once = {"boxes": b, "scores": s, "labels": l}
    for merge in ("nms", "vote"):
        tta = MultiScaleFlip(
            BrightBoxDetector(), scales=[10], max_size=10, merge=merge, vote_thresh=0.8
        )
        twice = tta.merge_outputs([once, once])
        assert (
            torch.allclose(twice["boxes"], b)
            and torch.equal(twice["scores"], s)
            and torch.equal(twice["labels"], l)
        )


def test_an_unknown_merge_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^MultiScaleFlip: merge must be one of nms \| soft_nms"):
        MultiScaleFlip(BrightBoxDetector(), scales=[10], max_size=10, merge="vot")
    with pytest.raises(ConfigError, match=r"^MultiScaleFlip needs at least one scale"):
        MultiScaleFlip(BrightBoxDetector(), scales=[], max_size=10)
    # from a config, the schema refuses it at load, before any model is built
    with pytest.raises(ConfigError, match=r"'test.merge' \(command line\).*did you mean 'vote'"):
        load_config(None, ["test.scales=[10]", "test.merge=vot"])
