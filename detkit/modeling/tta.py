"""Multi-scale and horizontal-flip testing (He et al. 2016, appendix): run the detector on several
versions of each image, map every pass back to the original image, and merge the union per class by
NMS, soft-NMS or box voting."""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..structures import box_iou
from ..structures.resize import resize_scale, resize_size
from .roi_heads import Detections, nms_and_vote

MERGES = ("nms", "soft_nms", "vote")


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    sigma: float = 0.5,
    score_thresh: float = 1e-3,
    max_dets: int = 100,
) -> Detections:
    """Gaussian soft-NMS per class (Bodla et al. 2017): overlapping boxes are down-weighted by
    exp(-IoU^2 / sigma) instead of removed."""
    out_b, out_s, out_l = [], [], []
    for c in labels.unique():
        idx = torch.where(labels == c)[0]
        b, s = boxes[idx], scores[idx].clone()
        iou = box_iou(b, b)
        alive = torch.ones(len(b), dtype=torch.bool, device=b.device)
        while alive.any():
            i = torch.where(alive, s, s.new_tensor(-1.0)).argmax()
            alive[i] = False
            out_b.append(b[i])
            out_s.append(s[i].clone())
            out_l.append(c)
            s[alive] *= torch.exp(-(iou[i, alive] ** 2) / sigma)
            alive &= s > score_thresh
    if not out_b:
        return boxes[:0], scores[:0], labels[:0]
    b, s, l = torch.stack(out_b), torch.stack(out_s), torch.stack(out_l)
    order = s.argsort(descending=True)[:max_dets]
    return b[order], s[order], l[order]


def hflip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Mirror XYXY boxes of an image of the given width (its own inverse)."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


class MultiScaleFlip(nn.Module):
    """Runs the detector at several scales (shorter side) and optionally mirrored, maps every pass
    back to the original image, and merges the union per class (nms | soft_nms | vote).

    Passes of the same scale are batched together (the original and the flipped image have the
    same size); scales run one after another so small scales are not padded to the largest.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        scales: Sequence[int],
        max_size: int,
        flip: bool = False,
        merge: str = "nms",
        nms_thresh: float = 0.5,
        vote_thresh: float = 0.8,
        detections_per_image: int = 100,
        rounding: str = "floor",
    ):
        super().__init__()
        if merge not in MERGES:
            raise ConfigError(
                f"MultiScaleFlip: merge must be one of {' | '.join(MERGES)}, got '{merge}'"
            )
        if not scales:
            raise ConfigError("MultiScaleFlip needs at least one scale (test.scales)")
        self.model = model
        self.scales, self.max_size, self.flip = [int(s) for s in scales], max_size, flip
        self.merge, self.nms_thresh, self.vote_thresh = merge, nms_thresh, vote_thresh
        self.detections_per_image = detections_per_image
        self.rounding = rounding

    @property
    def class_names(self):
        return self.model.class_names

    def passes(self, sample: dict) -> List[List[dict]]:
        """The augmented versions of one sample, grouped by scale."""
        h, w = sample["height"], sample["width"]
        groups = []
        for s in self.scales:
            base = {
                **sample,
                "size": resize_size(h, w, s, self.max_size, self.rounding),
                "scale": resize_scale(h, w, s, self.max_size),
            }
            group = [base]
            if self.flip:
                group.append({**base, "image": sample["image"].flip(-1), "flipped": True})
            groups.append(group)
        return groups

    @torch.no_grad()
    def forward(self, batch: List[dict]) -> List[Dict[str, Tensor]]:
        per_image: List[List[Dict[str, Tensor]]] = [[] for _ in batch]
        for scale_idx in range(len(self.scales)):
            flat, owners = [], []
            for i, sample in enumerate(batch):
                for p in self.passes(sample)[scale_idx]:
                    flat.append(p)
                    owners.append(i)
            for p, out, i in zip(flat, self.model(flat), owners):
                if p.get("flipped"):
                    out = {**out, "boxes": hflip_boxes(out["boxes"], p["width"])}
                per_image[i].append(out)
        return [self.merge_outputs(outs) for outs in per_image]

    def merge_outputs(self, outs: List[Dict[str, Tensor]]) -> Dict[str, Tensor]:
        boxes = torch.cat([o["boxes"] for o in outs])
        scores = torch.cat([o["scores"] for o in outs])
        labels = torch.cat([o["labels"] for o in outs])
        if self.merge == "soft_nms":
            b, s, l = soft_nms(boxes, scores, labels, max_dets=self.detections_per_image)
        else:
            vote = self.vote_thresh if self.merge == "vote" else None
            b, s, l = nms_and_vote(
                boxes, scores, labels, self.nms_thresh, vote, self.detections_per_image
            )
        return {"boxes": b, "scores": s, "labels": l}
