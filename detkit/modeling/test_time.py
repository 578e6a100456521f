"""Test-time accuracy components of the seed system (He et al. 2016, appendix):

- iterative box refinement with box voting (``refine_detections``, called by the RoI heads);
- multi-scale and horizontal-flip testing (``TestTimeAugmentation``), merged per class by NMS,
  soft-NMS or box voting.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from ..structures import batched_nms, box_iou, nonempty
from ..structures.resize import test_scale

logger = logging.getLogger("detkit")


def box_voting(kept_boxes: Tensor, all_boxes: Tensor, all_scores: Tensor, thresh: float) -> Tensor:
    """Each kept box becomes the score-weighted mean of the boxes (of its class) overlapping it at
    IoU >= thresh. A kept box is among ``all_boxes``, so it always votes for itself."""
    if len(kept_boxes) == 0:
        return kept_boxes
    weights = (box_iou(kept_boxes, all_boxes) >= thresh).to(all_scores.dtype) * all_scores[None, :]
    return (weights @ all_boxes) / weights.sum(dim=1, keepdim=True).clamp(min=1e-12)


def nms_and_vote(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    nms_thresh: float,
    vote_thresh: Optional[float],
    max_dets: int,
):
    """Per-class NMS on the union, then (optionally) per-class box voting among the same union."""
    keep = batched_nms(boxes, scores, labels, nms_thresh)[:max_dets]
    kept_boxes, kept_scores, kept_labels = boxes[keep], scores[keep], labels[keep]
    if vote_thresh is not None and len(keep):
        voted = kept_boxes.clone()
        for c in kept_labels.unique():
            k, a = kept_labels == c, labels == c
            voted[k] = box_voting(kept_boxes[k], boxes[a], scores[a], vote_thresh)
        kept_boxes = voted
    return kept_boxes, kept_scores, kept_labels


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    sigma: float = 0.5,
    score_thresh: float = 1e-3,
    max_dets: int = 100,
):
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


@torch.no_grad()
def refine_detections(
    heads,
    images,
    features: Dict[str, Tensor],
    proposals: List[Tensor],
    logits: Tensor,
    deltas: Tensor,
):
    """Iterative box refinement: pool a new feature at each regressed box (the box of the proposal's
    best foreground class), predict a new score and box; merge the new predictions with the previous
    ones, NMS the union at ``refine.nms_thresh`` (0.3), then box voting at ``refine.vote_thresh``."""
    cfg = heads.refine
    decoded = heads.decode(logits, deltas, proposals, images.image_sizes)
    union = [([b], [s]) for b, s in decoded]
    current = decoded
    for _ in range(int(cfg.get("iterations", 1))):
        regressed = [b[torch.arange(len(b)), s.argmax(dim=1)] for b, s in current]
        new_logits, new_deltas = heads.predictor(heads.region_features(images, features, regressed))
        current = heads.decode(new_logits, new_deltas, regressed, images.image_sizes)
        for (bs, ss), (b, s) in zip(union, current):
            bs.append(b)
            ss.append(s)
    results = []
    for bs, ss in union:
        boxes, scores = torch.cat(bs), torch.cat(ss)
        labels = torch.arange(heads.num_classes, device=scores.device).expand_as(scores).reshape(-1)
        boxes, scores = boxes.reshape(-1, 4), scores.reshape(-1)
        keep = torch.where(scores > heads.score_thresh)[0]
        keep = keep[nonempty(boxes[keep], heads.min_size_test)]
        results.append(
            nms_and_vote(
                boxes[keep],
                scores[keep],
                labels[keep],
                cfg.get("nms_thresh", 0.3),
                cfg.get("vote_thresh", 0.8),
                heads.detections_per_image,
            )
        )
    return results


def hflip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Mirror XYXY boxes of an image of the given width (its own inverse)."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


class TestTimeAugmentation(nn.Module):
    """Runs the detector at several scales (shorter side) and optionally mirrored, maps every pass
    back to the original image, and merges the union per class (nms | soft_nms | vote).

    Passes of the same scale are batched together (the original and the flipped image have the
    same size); scales run one after another so small scales are not padded to the largest.
    """

    __test__ = False  # not a pytest class, despite the name

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
    ):
        super().__init__()
        if merge not in ("nms", "soft_nms", "vote"):
            raise ValueError(f"unknown test.merge '{merge}'; valid: nms, soft_nms, vote")
        if not scales:
            raise ValueError("test-time augmentation needs at least one scale (test.scales)")
        self.model = model
        self.scales, self.max_size, self.flip = [int(s) for s in scales], max_size, flip
        self.merge, self.nms_thresh, self.vote_thresh = merge, nms_thresh, vote_thresh
        self.detections_per_image = detections_per_image

    @property
    def class_names(self):
        return self.model.class_names

    def passes(self, sample: dict) -> List[List[dict]]:
        """The augmented versions of one sample, grouped by scale."""
        h, w = sample["height"], sample["width"]
        groups = []
        for s in self.scales:
            base = {**sample, "scale": test_scale(h, w, s, self.max_size)}
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


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(cfg, device: torch.device) -> str:
    """``test.precision`` made concrete for ``device``: auto = the training precision on CUDA
    (solver.amp_dtype when solver.amp), fp32 elsewhere; fp16 needs CUDA."""
    value = str(cfg.test.precision)
    if value == "auto":
        return str(cfg.solver.amp_dtype) if cfg.solver.amp and device.type == "cuda" else "fp32"
    if value not in PRECISIONS:
        raise ValueError(
            f"test.precision must be one of auto, {', '.join(PRECISIONS)}; got '{value}'"
        )
    if value == "fp16" and device.type != "cuda":
        raise ValueError(
            f"test.precision=fp16 needs a CUDA device (this run is on {device.type}); "
            "use bf16 or fp32 on the CPU"
        )
    return value


class AutocastPredictor(nn.Module):
    """Runs the wrapped predictor under ``torch.autocast`` (bf16/fp16 convolutions and matmuls).

    Box math stays in float32 inside the model: box decoding casts the deltas to float32, the
    objectness and class scores are computed from float32 logits, the poolers keep RoI coordinates and
    pooling in float32, NMS runs in float32, and the returned boxes and scores are float32.
    """

    def __init__(self, model: nn.Module, precision: str):
        super().__init__()
        if PRECISIONS.get(precision) is None:
            raise ValueError(f"AutocastPredictor needs bf16 or fp16, got '{precision}'")
        self.model, self.precision = model, precision

    @property
    def class_names(self):
        return self.model.class_names

    def forward(self, batch: List[dict]) -> List[Dict[str, Tensor]]:
        device = next(self.model.parameters()).device
        with torch.autocast(device.type, dtype=PRECISIONS[self.precision]):
            return self.model(batch)


def build_predictor(model: nn.Module, cfg) -> nn.Module:
    """The model itself, or the model wrapped in test-time augmentation when test.scales/flip ask for it,
    run under autocast when test.precision resolves to bf16/fp16 on the model's device."""
    t = cfg.test
    predictor = model
    if t.scales or t.flip:
        scales = list(t.scales) or [cfg.input.min_size_test]
        predictor = TestTimeAugmentation(
            model,
            scales=scales,
            max_size=cfg.input.max_size_test,
            flip=t.flip,
            merge=t.merge,
            nms_thresh=t.merge_nms_thresh,
            vote_thresh=cfg.model.roi_heads.refine.vote_thresh,
            detections_per_image=cfg.model.roi_heads.detections_per_image,
        )
    device = next(model.parameters()).device
    precision = resolve_precision(cfg, device)
    if precision == "bf16" and device.type == "cpu" and not _cpu_has_fast_bf16():
        logger.warning(
            "test.precision=bf16 on a CPU without bf16 instructions: PyTorch falls back to slow "
            "convolutions (measured 16x slower than fp32 for the quick-start model, ~45x for a C4 head); use it to "
            "check bf16 accuracy, not for speed"
        )
    return predictor if precision == "fp32" else AutocastPredictor(predictor, precision)


def _cpu_has_fast_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
