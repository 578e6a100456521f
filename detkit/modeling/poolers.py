"""RoI feature extraction: RoIAlign or RoIPool over one or several feature levels.

With several levels (FPN), each RoI is pooled from the level given by the FPN paper's rule
k = floor(k0 + log2(sqrt(area) / 224 + level_eps_in_log) + level_eps), clamped to the available
levels. The defaults (level_eps 1e-6 after the log) are torchvision's MultiScaleRoIAlign;
detectron2 adds 1e-8 inside the log instead, which decides the level of a box whose log2 ratio lies
within ~1e-6 below an integer. The spatial scale of each level is 1 / its stride when the builder
passes the architecture's strides (``in_strides``), else 2 ** round(log2(feature / padded image)),
inferred from the shapes like torchvision does (right only when the padded image is a multiple of
every stride, or large). Traced (export), the RoI count and the per-level counts stay tensor-derived.
"""

from __future__ import annotations

import math
import warnings
from typing import List, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..layers import roi_align, roi_pool
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
    def __init__(
        self,
        *,
        output_size: int,
        canonical_scale: float = 224,
        canonical_level: int = 4,
        level_eps: float = 1e-6,
        level_eps_in_log: float = 0.0,
        in_strides: Sequence[int] = (),
    ):
        super().__init__()
        self.output_size = (output_size, output_size)
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.level_eps = level_eps
        self.level_eps_in_log = level_eps_in_log
        self.in_strides = [int(s) for s in in_strides]

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
        if self.in_strides and len(self.in_strides) != len(features):
            raise ValueError(
                f"the pooler has strides {self.in_strides} but got {len(features)} feature levels"
            )
        scales = (
            [1.0 / s for s in self.in_strides]
            if self.in_strides
            else [level_scale(f, image_size) for f in features]
        )
        if len(features) == 1:
            return self.pool_level(features[0], rois, scales[0])
        k_min = -int(math.log2(scales[0]))
        k_max = -int(math.log2(scales[-1]))
        area = (rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])
        ratio = torch.sqrt(area) / self.canonical_scale
        if self.level_eps_in_log:
            ratio = ratio + self.level_eps_in_log
        lvl = torch.floor(self.canonical_level + torch.log2(ratio) + self.level_eps)
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
        level_eps: float = 1e-6,
        level_eps_in_log: float = 0.0,
        in_strides: Sequence[int] = (),
    ):
        super().__init__(
            output_size=output_size,
            canonical_scale=canonical_scale,
            canonical_level=canonical_level,
            level_eps=level_eps,
            level_eps_in_log=level_eps_in_log,
            in_strides=in_strides,
        )
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def pool(self, feature, rois, scale):
        return roi_align(feature, rois, self.output_size, scale, self.sampling_ratio, self.aligned)


@ROI_POOLERS.register()
class ROIPool(_MultiLevelPooler):
    """Max pooling over quantised bins: the original Fast/Faster R-CNN RoI pooling (as the paper)."""

    def __init__(
        self,
        *,
        output_size: int = 7,
        canonical_scale: float = 224,
        canonical_level: int = 4,
        in_strides: Sequence[int] = (),
    ):
        super().__init__(
            output_size=output_size,
            canonical_scale=canonical_scale,
            canonical_level=canonical_level,
            in_strides=in_strides,
        )

    def pool(self, feature, rois, scale):
        return roi_pool(feature, rois, self.output_size, scale)
