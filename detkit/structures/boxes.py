"""Box math on Tensor[N, 4] in XYXY absolute pixels (continuous coordinates, width = x2 - x1).

IoU comes from ``torchvision.ops`` (NMS and RoI pooling are kernels: ``detkit.layers``); this module
adds the box math detkit needs around them: the box coder, clipping and small-box removal.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
from torch import Tensor
from torchvision.ops import box_iou  # noqa: F401  (re-exported)

# exp() of a larger log-scale delta would explode; 1000/16 is the ratio used since Fast R-CNN.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def clip_boxes(boxes: Tensor, size: Tuple[int, int]) -> Tensor:
    """Clip boxes (..., 4) to an image of ``size`` = (height, width): ints, or 0-dim tensors traced
    from the input's shape when exporting (same values either way)."""
    h, w = size
    if isinstance(h, Tensor):
        x = torch.minimum(boxes[..., 0::2].clamp(min=0), w.to(boxes.dtype))
        y = torch.minimum(boxes[..., 1::2].clamp(min=0), h.to(boxes.dtype))
    else:
        x = boxes[..., 0::2].clamp(min=0, max=w)
        y = boxes[..., 1::2].clamp(min=0, max=h)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def nonempty(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of boxes whose width and height are both >= min_size."""
    ws = boxes[:, 2] - boxes[:, 0]
    hs = boxes[:, 3] - boxes[:, 1]
    return torch.where((ws >= min_size) & (hs >= min_size))[0]


DELTA_SCALINGS = ("divide", "multiply_reciprocal")
CENTERS = ("corner", "midpoint")
SIZE_CLAMPS = ("upper", "both")


class BoxCoder:
    """Encodes a box relative to a reference box as (dx, dy, dw, dh) and back.

    dx = wx * (gx - px) / pw, dw = ww * log(gw / pw); the weights scale the deltas so that the
    regression targets have roughly unit variance (10, 10, 5, 5 for the RoI head).

    How ``decode`` rounds (the same function up to the last bit of float32; a detector with random
    weights flips NMS decisions on such bits, see the parity tests): ``delta_scaling`` "divide"
    (delta / w: torchvision, detectron2) or "multiply_reciprocal" (delta * float32(1 / w):
    mmdetection's target_stds); ``center`` of the reference box "corner" (x1 + 0.5 * width) or
    "midpoint" ((x1 + x2) * 0.5, mmdetection); ``size_clamp`` of dw/dh "upper" (at most
    ``scale_clamp``) or "both" (within +-``scale_clamp``, mmdetection's wh_ratio_clip).
    """

    def __init__(
        self,
        bbox_reg_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        scale_clamp: float = DEFAULT_SCALE_CLAMP,
        *,
        delta_scaling: str = "divide",
        center: str = "corner",
        size_clamp: str = "upper",
    ):
        for value, valid, what in (
            (delta_scaling, DELTA_SCALINGS, "delta_scaling"),
            (center, CENTERS, "center"),
            (size_clamp, SIZE_CLAMPS, "size_clamp"),
        ):
            if value not in valid:
                raise ValueError(f"unknown box coder {what} '{value}'; valid: {', '.join(valid)}")
        self.weights = tuple(float(w) for w in bbox_reg_weights)
        self.scale_clamp = scale_clamp
        self.delta_scaling = delta_scaling
        self.center = center
        self.size_clamp = size_clamp

    def encode(self, reference: Tensor, target: Tensor) -> Tensor:
        """Deltas (N, 4) that turn ``reference`` boxes (N, 4) into ``target`` boxes (N, 4)."""
        wx, wy, ww, wh = self.weights
        pw = reference[:, 2] - reference[:, 0]
        ph = reference[:, 3] - reference[:, 1]
        px = reference[:, 0] + 0.5 * pw
        py = reference[:, 1] + 0.5 * ph
        gw = target[:, 2] - target[:, 0]
        gh = target[:, 3] - target[:, 1]
        gx = target[:, 0] + 0.5 * gw
        gy = target[:, 1] + 0.5 * gh
        return torch.stack(
            (
                wx * (gx - px) / pw,
                wy * (gy - py) / ph,
                ww * torch.log(gw / pw),
                wh * torch.log(gh / ph),
            ),
            dim=1,
        )

    def decode(self, deltas: Tensor, reference: Tensor) -> Tensor:
        """Boxes from ``deltas`` (N, 4*C) applied to ``reference`` (N, 4); returns (N, 4*C).

        Box math is done in float32 even when the deltas come from a bf16/fp16 head.
        """
        deltas = deltas.float()
        reference = reference.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        pw = (reference[:, 2] - reference[:, 0])[:, None]
        ph = (reference[:, 3] - reference[:, 1])[:, None]
        if self.center == "midpoint":
            px = (reference[:, 0, None] + reference[:, 2, None]) * 0.5
            py = (reference[:, 1, None] + reference[:, 3, None]) * 0.5
        else:
            px = reference[:, 0, None] + 0.5 * pw
            py = reference[:, 1, None] + 0.5 * ph
        if self.delta_scaling == "multiply_reciprocal":
            stds = deltas.new_tensor([1.0 / wx, 1.0 / wy, 1.0 / ww, 1.0 / wh])
            dx, dy = deltas[:, 0::4] * stds[0], deltas[:, 1::4] * stds[1]
            dw, dh = deltas[:, 2::4] * stds[2], deltas[:, 3::4] * stds[3]
        else:
            dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
            dw, dh = deltas[:, 2::4] / ww, deltas[:, 3::4] / wh
        low = -self.scale_clamp if self.size_clamp == "both" else None
        dw = dw.clamp(min=low, max=self.scale_clamp)
        dh = dh.clamp(min=low, max=self.scale_clamp)
        cx = dx * pw + px
        cy = dy * ph + py
        half_w = 0.5 * (torch.exp(dw) * pw)
        half_h = 0.5 * (torch.exp(dh) * ph)
        boxes = torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=2)
        return boxes.reshape(deltas.shape[0], deltas.shape[1])
