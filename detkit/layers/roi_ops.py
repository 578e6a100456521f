"""RoI pooling of one feature level: torchvision's RoIAlign and RoIPool."""

from __future__ import annotations

from typing import Tuple

from torch import Tensor
from torchvision.ops import roi_align as _torchvision_roi_align
from torchvision.ops import roi_pool as _torchvision_roi_pool


def roi_align(
    feature: Tensor,
    rois: Tensor,
    output_size: Tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """(R, C, S, S) bilinear samples of ``feature`` (N, C, H, W) in each of ``rois`` (R, 5: image
    index, x1, y1, x2, y2 in image pixels, scaled by ``spatial_scale`` to the level)."""
    return _torchvision_roi_align(
        feature, rois, output_size, spatial_scale, sampling_ratio, aligned
    )


def roi_pool(
    feature: Tensor, rois: Tensor, output_size: Tuple[int, int], spatial_scale: float
) -> Tensor:
    """(R, C, S, S) max over the quantised bins of each of ``rois`` (as ``roi_align``)."""
    return _torchvision_roi_pool(feature, rois, output_size, spatial_scale)
