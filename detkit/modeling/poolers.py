"""RoI feature extraction: RoIAlign or RoIPool over one or several feature levels.

With several levels (FPN), each RoI is pooled from the level given by the FPN paper's rule
k = floor(k0 + log2(sqrt(area) / 224) + 1e-6), clamped to the available levels (same as
torchvision's MultiScaleRoIAlign). The spatial scale of each level is 2 ** round(log2(feature /
padded image)), inferred from the shapes like torchvision does. Traced (export), the RoI count and
the per-level counts stay tensor-derived.
"""

from __future__ import annotations

import math
import warnings
from typing import List, Sequence, Tuple

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align, roi_pool

from ..registry import ROI_POOLERS


def boxes_to_rois(boxes: List[Tensor]) -> Tensor:
    """Per-image (Ni, 4) boxes -> (sum Ni, 5) rois with the image index in column 0."""
    idx = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)])
    return torch.cat([idx, torch.cat(boxes)], dim=1)


def level_scale(feature: Tensor, image_size: Tuple[int, int]) -> float:
    """2 ** round(log2(feature height / padded image height)): 1 / the level's stride.

    The stride is fixed by the architecture (the padded image is a multiple of every stride), so a
    traced graph may hold it as a constant for every input size; only here is the tracer's warning
    about turning the traced ratio into a Python float expected, and it is silenced for this one
    value so that every other frozen value still fails the export (``detkit.export``)."""
    ratio = feature.shape[-2] / image_size[0]
    if isinstance(ratio, Tensor):  # tracing
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            ratio = float(ratio)
    return 2.0 ** round(math.log2(ratio))


class _MultiLevelPooler(nn.Module):
    def __init__(self, *, output_size: int, canonical_scale: float = 224, canonical_level: int = 4):
        super().__init__()
        self.output_size = (output_size, output_size)
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level

    def pool_level(self, feature: Tensor, rois: Tensor, scale: float) -> Tensor:
        """Pool float32 ``rois`` (R, 5) from one level; returns (R, C, S, S) in the feature's dtype."""
        return self.pool(feature.float(), rois, scale).to(feature.dtype)

    def pool(self, feature: Tensor, rois: Tensor, scale: float) -> Tensor:
        raise NotImplementedError  # implemented by the two registered poolers below

    def forward(
        self, features: Sequence[Tensor], boxes: List[Tensor], image_size: Tuple[int, int]
    ) -> Tensor:
        """features: one (N, C, H, W) tensor per level, finest first; boxes: per-image (Ni, 4).

        Box coordinates, the level assignment and the pooling itself stay float32 when autocast
        hands over bf16/fp16 features (bf16 would round a 700 px coordinate to a multiple of 4 px);
        the pooled features come back in the features' dtype."""
        rois = boxes_to_rois([b.float() for b in boxes])
        scales = [level_scale(f, image_size) for f in features]
        if len(features) == 1:
            return self.pool_level(features[0], rois, scales[0])
        k_min = -int(math.log2(scales[0]))
        k_max = -int(math.log2(scales[-1]))
        area = (rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])
        lvl = torch.floor(
            self.canonical_level + torch.log2(torch.sqrt(area) / self.canonical_scale) + 1e-6
        )
        lvl = lvl.clamp(min=k_min, max=k_max).to(torch.int64) - k_min
        if torch.jit.is_tracing():
            # pool each level's RoIs, then put the rows back in RoI order: the indexed assignment
            # below is exported with the example's per-level RoI counts baked in (its eager cost is
            # lower, so it stays the eager path)
            order = [torch.where(lvl == level)[0] for level in range(len(features))]
            pooled = [self.pool_level(f, rois[i], s) for f, i, s in zip(features, order, scales)]
            return torch.cat(pooled)[torch.argsort(torch.cat(order))]
        out = features[0].new_zeros((len(rois), features[0].shape[1]) + self.output_size)
        for level, (feature, scale) in enumerate(zip(features, scales)):
            idx = torch.where(lvl == level)[0]
            if len(idx):
                out[idx] = self.pool_level(feature, rois[idx], scale)
        return out


@ROI_POOLERS.register()
class ROIAlign(_MultiLevelPooler):
    """Bilinear sampling at regularly spaced points (no quantisation); ``aligned=True`` uses the
    half-pixel-corrected coordinates (Detectron2), ``False`` matches torchvision's Faster R-CNN."""

    def __init__(
        self,
        *,
        output_size: int = 7,
        sampling_ratio: int = 2,
        aligned: bool = False,
        canonical_scale: float = 224,
        canonical_level: int = 4,
    ):
        super().__init__(
            output_size=output_size,
            canonical_scale=canonical_scale,
            canonical_level=canonical_level,
        )
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def pool(self, feature, rois, scale):
        return roi_align(feature, rois, self.output_size, scale, self.sampling_ratio, self.aligned)


@ROI_POOLERS.register()
class ROIPool(_MultiLevelPooler):
    """Max pooling over quantised bins: the original Fast/Faster R-CNN RoI pooling (as the paper)."""

    def __init__(
        self, *, output_size: int = 7, canonical_scale: float = 224, canonical_level: int = 4
    ):
        super().__init__(
            output_size=output_size,
            canonical_scale=canonical_scale,
            canonical_level=canonical_level,
        )

    def pool(self, feature, rois, scale):
        return roi_pool(feature, rois, self.output_size, scale)
