"""Assigns each prediction (anchor or proposal) to a ground-truth box, or to background/ignore."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

FOREGROUND, BACKGROUND, IGNORE = 1, 0, -1


class Matcher:
    """IoU matcher with two thresholds.

    For each prediction (column of the G x P IoU matrix): IoU >= fg_iou_thresh -> foreground,
    IoU < bg_iou_thresh -> background, in between -> ignored. With ``allow_low_quality_matches``,
    every GT also claims the predictions that overlap it best (ties included) even below
    fg_iou_thresh, so no GT is left without an anchor (the RPN needs this for small and oddly
    shaped objects).
    """

    def __init__(
        self, fg_iou_thresh: float, bg_iou_thresh: float, allow_low_quality_matches: bool = False
    ):
        if bg_iou_thresh > fg_iou_thresh:
            raise ValueError(
                f"bg_iou_thresh ({bg_iou_thresh}) must not exceed fg_iou_thresh ({fg_iou_thresh})"
            )
        self.fg_iou_thresh = fg_iou_thresh
        self.bg_iou_thresh = bg_iou_thresh
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, iou: Tensor) -> Tuple[Tensor, Tensor]:
        """Returns (matched_gt (P,) int64, labels (P,) int8 in {1, 0, -1}).

        With no GT (G = 0) every prediction is background and matched_gt is 0 (unused).
        """
        num_preds = iou.shape[1]
        if iou.shape[0] == 0:
            return (
                iou.new_zeros(num_preds, dtype=torch.int64),
                iou.new_zeros(num_preds, dtype=torch.int8),
            )
        best_iou, matched = iou.max(dim=0)
        labels = torch.full((num_preds,), IGNORE, dtype=torch.int8, device=iou.device)
        labels[best_iou >= self.fg_iou_thresh] = FOREGROUND
        labels[best_iou < self.bg_iou_thresh] = BACKGROUND
        if self.allow_low_quality_matches:
            best_per_gt = iou.max(dim=1, keepdim=True).values
            # a GT with zero overlap everywhere would otherwise claim every prediction
            is_best = (iou == best_per_gt) & (best_per_gt > 0)
            labels[is_best.any(dim=0)] = FOREGROUND
        return matched, labels
