"""Non-maximum suppression: torchvision's, and one NMS per group while tracing."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms as _torchvision_batched_nms
from torchvision.ops import nms

__all__ = ["batched_nms", "nms"]


def batched_nms(
    boxes: Tensor,
    scores: Tensor,
    groups: Tensor,
    iou_thresh: float,
    num_groups: int = 0,
    offset_below: int = 0,
) -> Tensor:
    """NMS within each group (class or level); kept indices by descending score.

    Eagerly this is torchvision's ``batched_nms`` (what its Faster R-CNN runs; the parity test
    needs the same decisions): one NMS over boxes shifted apart by group (coordinate offsets) up to
    1000 boxes on the CPU (5000 on CUDA), one NMS per group above. ``offset_below`` > 0 moves that
    bound to fewer than ``offset_below`` boxes on every device (mmcv's ``batched_nms``: 10000). The
    offsets round the shifted coordinates, so near the threshold the two can keep different boxes.
    A traced graph (export) runs one NMS per group ``0..num_groups-1`` instead: torchvision
    traces its coordinate-offset trick, whose offsets reach num_groups x the image size, where
    float32 loses the precision IoU needs, and its per-group loop iterates over ``torch.unique``
    (data-dependent). ``num_groups`` is fixed by the architecture."""
    if not torch.jit.is_tracing():
        if offset_below <= 0 or boxes.numel() == 0:
            return _torchvision_batched_nms(boxes, scores, groups, iou_thresh)
        if boxes.shape[0] < offset_below:
            offsets = groups.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
            return nms(boxes + offsets[:, None], scores, iou_thresh)
        # in index order before the score sort, as torchvision's per-group path
        keep = _nms_each_group(boxes, scores, groups, iou_thresh, torch.unique(groups)).sort()[0]
        return keep[scores[keep].sort(descending=True)[1]]
    if num_groups < 1:
        raise ValueError("batched_nms needs num_groups >= 1 while tracing (one NMS per group)")
    keep = _nms_each_group(boxes, scores, groups, iou_thresh, range(num_groups))
    return keep[torch.sort(scores[keep], descending=True)[1]]


def _nms_each_group(
    boxes: Tensor, scores: Tensor, groups: Tensor, iou_thresh: float, ids
) -> Tensor:
    """The indices one NMS per group of ``ids`` keeps, group after group."""
    keeps = []
    for g in ids:
        idx = torch.where(groups == g)[0]
        keeps.append(idx[nms(boxes[idx], scores[idx], iou_thresh)])
    return torch.cat(keeps)
