"""Region Proposal Network.

Shapes used below:
    N: images in the batch          L: feature levels        A: anchors per cell
    Hi, Wi: grid of level i         Ai = Hi * Wi * A: anchors of level i; T = sum Ai
    logits: objectness before the sigmoid; deltas: encoded box regression (dx, dy, dw, dh)
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import batched_nms
from ..structures import BoxCoder, ImageList, box_iou, clip_boxes, nonempty
from .anchor_generator import AnchorGenerator
from .matcher import Matcher
from .sampler import sample_balanced

NMS_SCORES = ("prob", "logit")


class RPNHead(nn.Module):
    """``num_convs`` 3x3 convs + ReLU shared by all levels, then sibling 1x1 convs for objectness
    and deltas. torchvision's v2 detector uses two convs; v1, detectron2 and the paper use one."""

    def __init__(self, *, in_channels: int, num_anchors: int, num_convs: int = 1):
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"RPNHead needs num_convs >= 1, got {num_convs}")
        convs = [nn.Conv2d(in_channels, in_channels, 3, padding=1) for _ in range(num_convs)]
        # One conv keeps the name `conv` that every single-conv checkpoint (detkit's own, torchvision
        # v1, detectron2) uses; only deeper heads get the list `convs`.
        if num_convs == 1:
            self.conv = convs[0]
        else:
            self.convs = nn.ModuleList(convs)
        self.objectness = nn.Conv2d(in_channels, num_anchors, 1)
        self.deltas = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for layer in (*convs, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        convs = self.convs if hasattr(self, "convs") else [self.conv]
        logits, deltas = [], []
        for x in features:
            t = x
            for conv in convs:
                t = torch.relu(conv(t))
            logits.append(self.objectness(t))
            deltas.append(self.deltas(t))
        return logits, deltas


class RPN(nn.Module):
    def __init__(
        self,
        *,
        in_features: Sequence[str],
        head: RPNHead,
        anchor_generator: AnchorGenerator,
        matcher: Matcher,
        box_coder: BoxCoder,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        pre_nms_topk_train: int = 2000,
        pre_nms_topk_test: int = 1000,
        post_nms_topk_train: int = 2000,
        post_nms_topk_test: int = 1000,
        nms_thresh: float = 0.7,
        score_thresh: float = 0.0,
        min_size: float = 1e-3,
        min_size_strict: bool = False,
        nms_score: str = "prob",
        nms_offset_below: int = 0,
        smooth_l1_beta: float = 1 / 9,
        loss_weight: float = 1.0,
    ):
        super().__init__()
        self.in_features = list(in_features)
        self.head = head
        self.anchor_generator = anchor_generator
        self.matcher = matcher
        self.box_coder = box_coder
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.pre_nms_topk_train = pre_nms_topk_train
        self.pre_nms_topk_test = pre_nms_topk_test
        self.post_nms_topk_train = post_nms_topk_train
        self.post_nms_topk_test = post_nms_topk_test
        self.nms_thresh = nms_thresh
        self.score_thresh = score_thresh
        self.min_size = min_size
        self.min_size_strict = min_size_strict
        if nms_score not in NMS_SCORES:
            raise ValueError(f"unknown RPN nms_score '{nms_score}'; valid: {', '.join(NMS_SCORES)}")
        self.nms_score = nms_score
        self.nms_offset_below = nms_offset_below  # layers.batched_nms's offset_below
        self.smooth_l1_beta = smooth_l1_beta
        self.loss_weight = loss_weight

    def forward(
        self,
        images: ImageList,
        features: Dict[str, Tensor],
        gt_boxes: Optional[List[Tensor]] = None,
    ) -> Tuple[List[Tensor], Dict[str, Tensor]]:
        """Returns per-image proposals (Pi, 4) and the losses (empty at inference)."""
        feats = [features[f] for f in self.in_features]
        logits, deltas = self.head(feats)
        anchors = self.anchor_generator(
            [tuple(f.shape[-2:]) for f in feats], images.padded_size, feats[0].device
        )
        n = len(images)
        # (N, A, H, W) -> (N, H*W*A) and (N, 4A, H, W) -> (N, H*W*A, 4): anchor order is cell-major
        logits = [x.permute(0, 2, 3, 1).reshape(n, -1) for x in logits]
        deltas = [
            x.view(n, -1, 4, *x.shape[-2:]).permute(0, 3, 4, 1, 2).reshape(n, -1, 4) for x in deltas
        ]
        with torch.no_grad():
            proposals = self.select_proposals(anchors, logits, deltas, images.image_sizes)
        losses = {}
        if self.training:
            if gt_boxes is None:
                raise ValueError("the RPN needs gt_boxes in training mode")
            losses = self.losses(
                torch.cat(anchors), torch.cat(logits, 1), torch.cat(deltas, 1), gt_boxes
            )
        return proposals, losses

    def select_proposals(
        self,
        anchors: List[Tensor],
        logits: List[Tensor],
        deltas: List[Tensor],
        image_sizes: List[Tuple[int, int]],
    ) -> List[Tensor]:
        """Top-k per level, decode, clip, drop tiny boxes, NMS per level, keep the best post-NMS top-k.

        Tiny boxes: width or height < min_size (torchvision), or <= min_size with
        ``min_size_strict`` (detectron2, whose min_size 0 drops exactly the empty boxes). NMS and
        the post-NMS order rank by ``nms_score``: the sigmoid probability (torchvision) or the
        logit (detectron2). They differ at ties: float32 sigmoid maps neighbouring logits to one
        value (above ~17 everything is 1.0), and which of two tied boxes survives NMS then depends
        on the score used.

        Traceable as it is (export): counts come from ``Tensor.shape``, which is traced, and the
        images are indexed rather than iterated over."""
        pre_topk, post_topk = (
            (self.pre_nms_topk_train, self.post_nms_topk_train)
            if self.training
            else (self.pre_nms_topk_test, self.post_nms_topk_test)
        )
        n = logits[0].shape[0]
        topk_logits, topk_boxes, topk_levels = [], [], []
        for level, (a, lg, d) in enumerate(zip(anchors, logits, deltas)):
            num = lg.shape[1]  # a 0-dim tensor while tracing: min() would freeze it
            k = torch.clamp(num, max=pre_topk) if isinstance(num, Tensor) else min(pre_topk, num)
            lg_k, idx = lg.detach().topk(k, dim=1)
            d_k = d.detach().gather(1, idx[:, :, None].expand(-1, -1, 4))  # (N, k, 4)
            boxes = self.box_coder.decode(d_k.reshape(-1, 4), a[idx.reshape(-1)]).view(n, -1, 4)
            topk_logits.append(lg_k)
            topk_boxes.append(boxes)
            topk_levels.append(torch.full_like(idx[0], level))
        all_logits = torch.cat(topk_logits, 1)
        all_boxes = torch.cat(topk_boxes, 1)
        levels = torch.cat(topk_levels)
        proposals = []
        for i, size in enumerate(image_sizes):
            logit = all_logits[i].float()
            prob = torch.sigmoid(logit)
            boxes = clip_boxes(all_boxes[i], size)
            keep = self._nonempty(boxes)
            keep = keep[prob[keep] >= self.score_thresh]
            score = prob if self.nms_score == "prob" else logit
            boxes, score, lvl = boxes[keep], score[keep], levels[keep]
            keep = batched_nms(
                boxes.float(), score, lvl, self.nms_thresh, len(anchors), self.nms_offset_below
            )
            proposals.append(boxes[keep[:post_topk]])
        return proposals

    def _nonempty(self, boxes: Tensor) -> Tensor:
        if not self.min_size_strict:
            return nonempty(boxes, self.min_size)
        ws, hs = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        return torch.where((ws > self.min_size) & (hs > self.min_size))[0]

    def losses(
        self, anchors: Tensor, logits: Tensor, deltas: Tensor, gt_boxes: List[Tensor]
    ) -> Dict[str, Tensor]:
        """Objectness BCE and smooth-L1 box loss over a balanced sample of anchors per image,
        both normalised by the number of sampled anchors (an image without GT gives box loss 0)."""
        sampled, labels, pos_deltas, targets = [], [], [], []
        for i, gt in enumerate(gt_boxes):
            with torch.no_grad():
                matched, match_labels = self.matcher(box_iou(gt, anchors))
                pos, neg = sample_balanced(
                    match_labels, self.batch_size_per_image, self.positive_fraction
                )
                targets.append(
                    self.box_coder.encode(anchors[pos], gt[matched[pos]])
                    if len(gt)
                    else anchors[pos]
                )
            offset = i * len(anchors)
            sampled += [pos + offset, neg + offset]
            labels += [
                torch.ones_like(pos, dtype=logits.dtype),
                torch.zeros_like(neg, dtype=logits.dtype),
            ]
            pos_deltas.append(deltas[i, pos])
        sampled_idx = torch.cat(sampled)
        num = max(sampled_idx.numel(), 1)
        obj_loss = (
            F.binary_cross_entropy_with_logits(
                logits.reshape(-1)[sampled_idx].float(), torch.cat(labels).float(), reduction="sum"
            )
            / num
        )
        box_loss = (
            F.smooth_l1_loss(
                torch.cat(pos_deltas).float(),
                torch.cat(targets).float(),
                beta=self.smooth_l1_beta,
                reduction="sum",
            )
            / num
        )
        return {
            "loss_rpn_cls": obj_loss * self.loss_weight,
            "loss_rpn_box": box_loss * self.loss_weight,
        }
