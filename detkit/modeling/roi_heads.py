"""RoI heads: sample proposals, pool their features, classify them and regress class-specific boxes.

Shapes used below:
    R: regions in the batch (sum over images)     K: foreground classes (labels 0..K-1)
    logits: (R, K + 1), background is the LAST column (index K) and exists only here
    deltas: (R, 4K), class-specific box regression

At test time the heads decode every region into K class-specific boxes and select detections
(threshold -> drop tiny boxes -> per-class NMS -> best ``detections_per_image``). With
``refine_iterations > 0`` they first refine iteratively (He et al. 2016, appendix): re-pool at each
region's regressed box, predict again, and select from the union of all rounds with a lower NMS
threshold followed by box voting.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import batched_nms
from ..structures import BoxCoder, ImageList, box_iou, clip_boxes, nonempty
from .matcher import Matcher
from .sampler import sample_balanced

Detections = Tuple[Tensor, Tensor, Tensor]  # boxes (D, 4), scores (D,), labels (D,)


class BoxPredictor(nn.Module):
    """Sibling linear layers: classifier over K + 1 classes and class-specific box deltas."""

    def __init__(self, *, in_channels: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


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
    num_classes: int = 0,
    offset_below: int = 0,
) -> Detections:
    """Per-class NMS, the best ``max_dets`` kept, then (when ``vote_thresh`` is given) per-class box
    voting among all the input boxes. Shared by the RoI heads and the multi-scale/flip merge.
    ``num_classes`` is needed only while tracing (export: one NMS per class); ``offset_below``:
    ``layers.batched_nms``'s."""
    keep = batched_nms(boxes, scores, labels, nms_thresh, num_classes, offset_below)[:max_dets]
    kept_boxes, kept_scores, kept_labels = boxes[keep], scores[keep], labels[keep]
    if vote_thresh is not None and len(keep):
        voted = kept_boxes.clone()
        for c in kept_labels.unique():
            k, a = kept_labels == c, labels == c
            voted[k] = box_voting(kept_boxes[k], boxes[a], scores[a], vote_thresh)
        kept_boxes = voted
    return kept_boxes, kept_scores, kept_labels


class ROIHeads(nn.Module):
    def __init__(
        self,
        *,
        in_features: Sequence[str],
        pooler: nn.Module,
        box_head: nn.Module,
        num_classes: int,
        matcher: Matcher,
        box_coder: BoxCoder,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        add_gt_as_proposals: bool = True,
        smooth_l1_beta: float = 1 / 9,
        loss_weight: float = 1.0,
        score_thresh_test: float = 0.05,
        nms_thresh_test: float = 0.5,
        detections_per_image: int = 100,
        min_size_test: float = 1e-2,
        nms_offset_below: int = 0,
        context: bool = False,
        refine_iterations: int = 0,
        refine_nms_thresh: float = 0.3,
        refine_vote_thresh: float = 0.8,
    ):
        super().__init__()
        self.in_features = list(in_features)
        self.pooler = pooler
        self.box_head = box_head
        self.num_classes = num_classes
        self.context = context
        self.predictor = BoxPredictor(
            in_channels=box_head.out_channels * (2 if context else 1), num_classes=num_classes
        )
        self.matcher = matcher
        self.box_coder = box_coder
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.add_gt_as_proposals = add_gt_as_proposals
        self.smooth_l1_beta = smooth_l1_beta
        self.loss_weight = loss_weight
        self.score_thresh_test = score_thresh_test
        self.nms_thresh_test = nms_thresh_test
        self.detections_per_image = detections_per_image
        self.min_size_test = min_size_test
        self.nms_offset_below = nms_offset_below  # layers.batched_nms's offset_below
        if refine_iterations < 0:
            raise ValueError(f"refine_iterations must be >= 0 (0 = off), got {refine_iterations}")
        self.refine_iterations = int(refine_iterations)
        self.refine_nms_thresh = refine_nms_thresh
        self.refine_vote_thresh = refine_vote_thresh

    # ---------------------------------------------------------------- features
    def region_features(
        self, images: ImageList, features: Dict[str, Tensor], boxes: List[Tensor]
    ) -> Tensor:
        """Pool and run the box head on per-image boxes; with context, append the image's feature."""
        feats = [features[f] for f in self.in_features]
        x = self.box_head(self.pooler(feats, boxes, images.padded_size))
        if not self.context:
            return x
        ctx = self.context_features(images, feats)
        ctx = torch.cat([ctx[i, None].expand(b.shape[0], -1) for i, b in enumerate(boxes)])
        return torch.cat([x, ctx], dim=1)

    def context_features(self, images: ImageList, feats: List[Tensor]) -> Tensor:
        """Global context: the whole image as one RoI through the same pooler and head (one per image)."""
        whole = [images.image_box(i)[None] for i in range(len(images))]
        return self.box_head(self.pooler(feats, whole, images.padded_size))

    def forward(
        self,
        images: ImageList,
        features: Dict[str, Tensor],
        proposals: List[Tensor],
        gt_boxes: Optional[List[Tensor]] = None,
        gt_labels: Optional[List[Tensor]] = None,
    ) -> Tuple[List[Detections], Dict[str, Tensor]]:
        if self.training:
            return [], self.losses(images, features, proposals, gt_boxes, gt_labels)
        logits, deltas = self.predictor(self.region_features(images, features, proposals))
        decoded = self.decode(logits, deltas, proposals, images.image_sizes)
        if self.refine_iterations > 0:
            return self.refine(images, features, decoded), {}
        return [self.select(boxes, scores, self.nms_thresh_test) for boxes, scores in decoded], {}

    # ---------------------------------------------------------------- training
    @torch.no_grad()
    def sample_proposals(
        self, proposals: List[Tensor], gt_boxes: List[Tensor], gt_labels: List[Tensor]
    ):
        """Per image: add the GT boxes to the proposals (a perfect proposal for every object from the
        first iteration on), match at IoU 0.5, sample 25% foreground; return boxes, class targets
        (K = background) and regression targets."""
        boxes_out, labels_out, targets_out = [], [], []
        for props, gt, gl in zip(proposals, gt_boxes, gt_labels):
            if self.add_gt_as_proposals:
                props = torch.cat([props, gt.to(props.dtype)])
            matched, match_labels = self.matcher(box_iou(gt, props))
            pos, neg = sample_balanced(
                match_labels, self.batch_size_per_image, self.positive_fraction
            )
            idx = torch.cat([pos, neg])
            labels = torch.full(
                (len(idx),), self.num_classes, dtype=torch.int64, device=props.device
            )
            if len(gt):
                labels[: len(pos)] = gl[matched[pos]]
                targets = self.box_coder.encode(props[pos], gt[matched[pos]])
            else:
                targets = props.new_zeros((0, 4))
            boxes_out.append(props[idx])
            labels_out.append(labels)
            targets_out.append(targets)
        return boxes_out, labels_out, targets_out

    def losses(self, images, features, proposals, gt_boxes, gt_labels) -> Dict[str, Tensor]:
        if gt_boxes is None or gt_labels is None:
            raise ValueError("the RoI heads need gt_boxes and gt_labels in training mode")
        boxes, labels, targets = self.sample_proposals(proposals, gt_boxes, gt_labels)
        logits, deltas = self.predictor(self.region_features(images, features, boxes))
        labels = torch.cat(labels)
        targets = torch.cat(targets)
        if labels.numel() == 0:  # no proposals and no GT anywhere: nothing to learn from
            zero = logits.sum() * 0 + deltas.sum() * 0
            return {"loss_cls": zero, "loss_box": zero}
        loss_cls = F.cross_entropy(logits.float(), labels)
        pos = torch.where(labels < self.num_classes)[0]
        pos_deltas = deltas.view(len(deltas), self.num_classes, 4)[pos, labels[pos]]
        loss_box = (
            F.smooth_l1_loss(
                pos_deltas.float(), targets.float(), beta=self.smooth_l1_beta, reduction="sum"
            )
            / labels.numel()
        )
        return {"loss_cls": loss_cls * self.loss_weight, "loss_box": loss_box * self.loss_weight}

    # ---------------------------------------------------------------- inference
    def decode(self, logits: Tensor, deltas: Tensor, proposals: List[Tensor], image_sizes):
        """Per image: (P, K) foreground scores and (P, K, 4) clipped class-specific boxes."""
        scores = F.softmax(logits.float(), dim=-1)[:, : self.num_classes]
        boxes = self.box_coder.decode(deltas, torch.cat(proposals)).view(-1, self.num_classes, 4)
        counts = [p.shape[0] for p in proposals]  # traced (not frozen) when exporting
        return [
            (clip_boxes(b, size), s)
            for b, s, size in zip(boxes.split(counts), scores.split(counts), image_sizes)
        ]

    def select(
        self, boxes: Tensor, scores: Tensor, nms_thresh: float, vote_thresh: Optional[float] = None
    ) -> Detections:
        """One image's (P, K, 4) boxes and (P, K) scores -> detections: score threshold, drop tiny
        boxes, per-class NMS, keep the best detections_per_image, then box voting if asked."""
        labels = torch.arange(self.num_classes, device=scores.device).expand_as(scores).reshape(-1)
        boxes, scores = boxes.reshape(-1, 4), scores.reshape(-1)
        keep = torch.where(scores > self.score_thresh_test)[0]
        keep = keep[nonempty(boxes[keep], self.min_size_test)]
        return nms_and_vote(
            boxes[keep],
            scores[keep],
            labels[keep],
            nms_thresh,
            vote_thresh,
            self.detections_per_image,
            self.num_classes,
            self.nms_offset_below,
        )

    @torch.no_grad()
    def refine(
        self, images: ImageList, features: Dict[str, Tensor], decoded: List[Tuple[Tensor, Tensor]]
    ) -> List[Detections]:
        """Iterative box refinement: pool a new feature at each region's regressed box (the box of
        its best foreground class) and predict a new score and box, ``refine_iterations`` times.
        Every round's predictions join the union; the union is selected with NMS at
        ``refine_nms_thresh`` (0.3 in the paper: the rounds overlap heavily) and box voting at
        ``refine_vote_thresh``."""
        union = [([b], [s]) for b, s in decoded]
        current = decoded
        for _ in range(self.refine_iterations):
            regressed = [b[torch.arange(len(b)), s.argmax(dim=1)] for b, s in current]
            logits, deltas = self.predictor(self.region_features(images, features, regressed))
            current = self.decode(logits, deltas, regressed, images.image_sizes)
            for (bs, ss), (b, s) in zip(union, current):
                bs.append(b)
                ss.append(s)
        return [
            self.select(
                torch.cat(bs), torch.cat(ss), self.refine_nms_thresh, self.refine_vote_thresh
            )
            for bs, ss in union
        ]
