"""RoI heads: sample proposals, pool their features, classify them and regress class-specific boxes.

Shapes used below:
    R: regions in the batch (sum over images)     K: foreground classes (labels 0..K-1)
    logits: (R, K + 1), background is the LAST column (index K) and exists only here
    deltas: (R, 4K), class-specific box regression
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..structures import BoxCoder, ImageList, batched_nms, box_iou, clip_boxes, nonempty
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
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_image: int = 100,
        min_size_test: float = 1e-2,
        context: bool = False,
        refine: Optional[dict] = None,
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
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_image = detections_per_image
        self.min_size_test = min_size_test
        self.refine = dict(refine or {"enabled": False})

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
        counts = torch.as_tensor([len(b) for b in boxes], device=x.device)
        return torch.cat([x, ctx.repeat_interleave(counts, dim=0)], dim=1)

    def context_features(self, images: ImageList, feats: List[Tensor]) -> Tensor:
        """Global context: the whole image as one RoI through the same pooler and head (one per image)."""
        whole = [
            torch.tensor([[0.0, 0.0, w, h]], device=feats[0].device) for h, w in images.image_sizes
        ]
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
        if self.refine.get("enabled"):
            from .test_time import refine_detections  # test-time only; keeps training code small

            return refine_detections(self, images, features, proposals, logits, deltas), {}
        return self.postprocess(logits, deltas, proposals, images.image_sizes), {}

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
        boxes = self.box_coder.decode(deltas, torch.cat(proposals)).view(
            len(deltas), self.num_classes, 4
        )
        counts = [len(p) for p in proposals]
        return [
            (clip_boxes(b, size), s)
            for b, s, size in zip(boxes.split(counts), scores.split(counts), image_sizes)
        ]

    def postprocess(self, logits, deltas, proposals, image_sizes) -> List[Detections]:
        return [
            self.select(boxes, scores)
            for boxes, scores in self.decode(logits, deltas, proposals, image_sizes)
        ]

    def select(self, boxes: Tensor, scores: Tensor) -> Detections:
        """Score threshold, drop tiny boxes, per-class NMS, keep the best detections_per_image."""
        labels = torch.arange(self.num_classes, device=scores.device).expand_as(scores).reshape(-1)
        boxes, scores = boxes.reshape(-1, 4), scores.reshape(-1)
        keep = torch.where(scores > self.score_thresh)[0]
        keep = keep[nonempty(boxes[keep], self.min_size_test)]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_image]
        return boxes[keep], scores[keep], labels[keep]
