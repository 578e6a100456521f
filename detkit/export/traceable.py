"""A tracing-friendly inference graph of a detkit Faster R-CNN, for TorchScript and ONNX export.

``ExportableDetector(model, min_size=, max_size=)`` takes ONE image and returns its detections:

    input   image   uint8 (3, H, W), RGB, any H and W (the original image, not resized)
    output  boxes   float32 (D, 4)  XYXY in the input image's pixels
            scores  float32 (D,)    descending
            labels  int64 (D,)      0-based class index (model.class_names)

It reuses the model's modules (backbone, neck, RPN head, box head, predictor, box coders) and redoes
the glue between them with tensor operations only, because tracing records tensor operations and
freezes everything computed in Python: the resize scale, the padded size, the anchor grids, the
top-k sizes, the per-level RoI assignment and the image size used for clipping all derive from the
input's shape as tensors, so one traced graph serves every image size. Python loops run over
things fixed by the architecture (feature levels, classes), never over data.

The arithmetic equals ``FasterRCNN.predict`` on a test sample (normalise, resize to
``floor(side * scale)`` bilinearly, zero-pad to ``size_divisibility``; RPN; RoI heads; rescale), with
one deliberate difference: per-class (per-level) NMS runs one NMS per class instead of the
coordinate-offset trick, which loses float32 precision when offsets reach 10^5 px. Not supported:
iterative box refinement (its box voting is data-dependent) and test-time augmentation.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.onnx import operators as onnx_operators
from torchvision.ops import nms

from ..modeling.poolers import ROIAlign, ROIPool


class ExportError(ValueError):
    """The model uses something the exported graph cannot express; the message says what."""


def image_shape(x: Tensor) -> Tensor:
    """(H, W) of a (..., H, W) tensor as an int64 tensor (a graph value while tracing)."""
    return onnx_operators.shape_as_tensor(x)[-2:]


def per_group_nms(
    boxes: Tensor, scores: Tensor, groups: Tensor, num_groups: int, thresh: float
) -> Tensor:
    """NMS within each group (class or level), kept indices sorted by descending score."""
    keeps = []
    for g in range(num_groups):
        idx = torch.where(groups == g)[0]
        keeps.append(idx[nms(boxes[idx], scores[idx], thresh)])
    keep = torch.cat(keeps)
    return keep[torch.sort(scores[keep], descending=True)[1]]


def clip_to(boxes: Tensor, hw: Tensor) -> Tensor:
    """Clip (..., 4) boxes to an image of size hw = (h, w) given as a float tensor."""
    x = torch.minimum(boxes[..., 0::2].clamp(min=0), hw[1])
    y = torch.minimum(boxes[..., 1::2].clamp(min=0), hw[0])
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def nonempty_idx(boxes: Tensor, min_size: float) -> Tensor:
    return torch.where(
        ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    )[0]


class ExportableDetector(nn.Module):
    def __init__(self, model: nn.Module, *, min_size: int, max_size: int):
        super().__init__()
        heads = model.roi_heads
        if heads.refine.get("enabled"):
            raise ExportError(
                "model.roi_heads.refine.enabled=true (iterative refinement with box voting) cannot be "
                "exported; export with model.roi_heads.refine.enabled=false"
            )
        if not isinstance(heads.pooler, (ROIAlign, ROIPool)):
            raise ExportError(
                f"cannot export the RoI pooler {type(heads.pooler).__name__}; "
                "supported: ROIAlign, ROIPool"
            )
        self.model = model.eval()
        self.class_names = list(model.class_names)
        self.min_size, self.max_size = float(min_size), float(max_size)
        self.register_buffer(
            "size_limits", torch.tensor([min_size, max_size], dtype=torch.float64), persistent=False
        )
        strides = dict(getattr(model.neck, "strides", None) or model.backbone.strides)
        self.rpn_strides = [strides[f] for f in model.rpn.in_features]
        self.roi_strides = [strides[f] for f in heads.in_features]

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        x, size = self.preprocess(image)
        feats = self.model.backbone(x)
        if self.model.neck is not None:
            feats = self.model.neck(feats)
        proposals = self.proposals(x, size, feats)
        boxes, scores, labels = self.detect(x, size, feats, proposals)
        ratio = image_shape(image).float() / size  # original / resized, as FasterRCNN.rescale
        scale = torch.stack([ratio[1], ratio[0], ratio[1], ratio[0]])
        return boxes * scale, scores, labels

    # ------------------------------------------------------------------ preprocessing
    def preprocess(self, image: Tensor) -> Tuple[Tensor, Tensor]:
        """Normalise, resize by the test scale, pad; returns (1, 3, Hp, Wp) and the resized (h, w) float."""
        m = self.model
        x = (image.float() / 255.0 - m.pixel_mean) / m.pixel_std
        hw = image_shape(image).double()
        # structures.resize.test_scale in double; the output size is floor(side * scale) in double, as
        # F.interpolate(scale_factor=scale, recompute_scale_factor=True) computes it
        # Kept as 1-D float64 tensors: ``number / tensor`` is exported as number * Reciprocal(x), and
        # 0-dim values are re-typed to float32 by the ONNX exporter; either rounds differently from
        # Python's double division, and then floor() can land one pixel lower.
        sides = torch.cat(
            [hw.min(0, keepdim=True)[0], hw.max(0, keepdim=True)[0]]
        )  # (shorter, longer)
        scale = (self.size_limits / sides).min(0, keepdim=True)[0]
        out_hw = torch.floor(hw * scale).long()
        x = F.interpolate(
            x[None], size=(out_hw[0], out_hw[1]), mode="bilinear", align_corners=False
        )
        d = int(m.size_divisibility)
        if d > 1:
            pad = (out_hw + (d - 1)) // d * d - out_hw
            x = F.pad(x, (0, pad[1], 0, pad[0]))
        return x, out_hw.float()

    # ------------------------------------------------------------------ RPN
    def anchors(self, level: int, feature: Tensor, padded_hw: Tensor) -> Tensor:
        """(Hi*Wi*A, 4) anchors of one level, cell-major (as AnchorGenerator._grid)."""
        grid = image_shape(feature)
        stride = padded_hw // grid
        xs = torch.arange(grid[1], dtype=torch.int32) * stride[1].int()
        ys = torch.arange(grid[0], dtype=torch.int32) * stride[0].int()
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack((x.reshape(-1), y.reshape(-1), x.reshape(-1), y.reshape(-1)), dim=1)
        base = self.model.rpn.anchor_generator.cell_anchors[level].to(feature.device)
        return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)

    def proposals(self, x: Tensor, size: Tensor, feats: Dict[str, Tensor]) -> Tensor:
        rpn = self.model.rpn
        levels = [feats[f] for f in rpn.in_features]
        logits, deltas = rpn.head(levels)
        padded = image_shape(x)
        all_logits, all_boxes, all_levels = [], [], []
        for i, (f, lg, d) in enumerate(zip(levels, logits, deltas)):
            lg = lg[0].permute(1, 2, 0).reshape(-1)
            d = d[0].reshape(-1, 4, d.shape[-2], d.shape[-1]).permute(2, 3, 0, 1).reshape(-1, 4)
            k = torch.clamp(image_shape(lg[None])[1:], max=rpn.pre_nms_topk[False])
            lg_k, idx = lg.topk(k[0])
            boxes = rpn.box_coder.decode(d[idx], self.anchors(i, f, padded)[idx]).reshape(-1, 4)
            all_logits.append(lg_k)
            all_boxes.append(boxes)
            all_levels.append(torch.full_like(idx, i))
        prob = torch.sigmoid(torch.cat(all_logits).float())
        boxes, lvl = clip_to(torch.cat(all_boxes), size), torch.cat(all_levels)
        keep = nonempty_idx(boxes, rpn.min_size)
        keep = keep[prob[keep] >= rpn.score_thresh]
        boxes, prob, lvl = boxes[keep], prob[keep], lvl[keep]
        keep = per_group_nms(boxes, prob, lvl, len(levels), rpn.nms_thresh)[
            : rpn.post_nms_topk[False]
        ]
        return boxes[keep]

    # ------------------------------------------------------------------ RoI heads
    def pool(self, feats: List[Tensor], rois: Tensor) -> Tensor:
        """Multi-level RoI pooling with the FPN level rule of ``_MultiLevelPooler``."""
        pooler = self.model.roi_heads.pooler
        scales = [1.0 / s for s in self.roi_strides]
        if len(feats) == 1:
            return self._pool_level(feats[0], rois, scales[0])
        k_min = min(s.bit_length() - 1 for s in self.roi_strides)
        k_max = max(s.bit_length() - 1 for s in self.roi_strides)
        area = (rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])
        lvl = torch.floor(
            pooler.canonical_level + torch.log2(torch.sqrt(area) / pooler.canonical_scale) + 1e-6
        )
        lvl = lvl.clamp(min=k_min, max=k_max).to(torch.int64) - k_min
        # pool each level's RoIs, then put the rows back in RoI order (an indexed assignment would be
        # traced with the example's per-level RoI counts baked in)
        order, pooled = [], []
        for level, (feature, scale) in enumerate(zip(feats, scales)):
            idx = torch.where(lvl == level)[0]
            order.append(idx)
            pooled.append(self._pool_level(feature, rois[idx], scale))
        return torch.cat(pooled)[torch.argsort(torch.cat(order))]

    def _pool_level(self, feature: Tensor, rois: Tensor, scale: float) -> Tensor:
        return self.model.roi_heads.pooler.pool(feature, rois, scale)  # the export runs in float32

    def region_features(self, feats: List[Tensor], boxes: Tensor, size: Tensor) -> Tensor:
        heads = self.model.roi_heads
        rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes], dim=1)
        x = heads.box_head(self.pool(feats, rois))
        if not heads.context:
            return x
        whole = torch.cat(
            [torch.zeros(1, 3, dtype=boxes.dtype), size.flip(0)[None].to(boxes.dtype)], dim=1
        )
        ctx = heads.box_head(self.pool(feats, whole))
        return torch.cat([x, ctx.expand(x.shape[0], -1)], dim=1)

    def detect(self, x: Tensor, size: Tensor, feats: Dict[str, Tensor], proposals: Tensor):
        heads = self.model.roi_heads
        k = heads.num_classes
        logits, deltas = heads.predictor(
            self.region_features([feats[f] for f in heads.in_features], proposals, size)
        )
        scores = F.softmax(logits.float(), dim=-1)[:, :k]
        boxes = clip_to(heads.box_coder.decode(deltas, proposals).reshape(-1, k, 4), size)
        labels = torch.arange(k).expand_as(scores).reshape(-1)
        boxes, scores = boxes.reshape(-1, 4), scores.reshape(-1)
        keep = torch.where(scores > heads.score_thresh)[0]
        keep = keep[nonempty_idx(boxes[keep], heads.min_size_test)]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = per_group_nms(boxes, scores, labels, k, heads.nms_thresh)[
            : heads.detections_per_image
        ]
        return boxes[keep], scores[keep], labels[keep]
