"""The deterministic inference size: shorter side to min_size unless the longer side would exceed
max_size. Every caller that decides a test size (the inference mapper, ``Detector.sample``, the
multi-scale/flip wrapper) and the training resize use these helpers, so one config key
(``input.resize_rounding``) changes all of them together."""

from __future__ import annotations

import math
from typing import Tuple

ROUNDINGS = ("floor", "round", "scaled_round")


def resize_scale(height: int, width: int, min_size: float, max_size: float) -> float:
    """scale = min(min_size / shorter side, max_size / longer side), in Python floats (double) like
    torchvision's GeneralizedRCNNTransform in eager mode, so detkit resizes to exactly the same size
    (F.interpolate with recompute_scale_factor=True gives floor(side * scale))."""
    return min(float(min_size) / min(height, width), float(max_size) / max(height, width))


def resize_size(
    height: int, width: int, min_size: float, max_size: float, rounding: str = "floor"
) -> Tuple[int, int]:
    """The (height, width) to resize to.

    ``floor``: floor(side * resize_scale(...)), torchvision's size (what F.interpolate with
    recompute_scale_factor=True computes). ``round``: detectron2's ResizeShortestEdge steps in
    doubles -- the shorter side becomes min_size, the other side scales; when the longer side
    exceeds max_size both scaled sides are scaled again; each side is then rounded half up
    (int(x + 0.5)). The two differ whenever a side's fraction is >= 0.5 and in the capped case.
    ``scaled_round``: int(side * resize_scale(...) + 0.5), one scale for both sides (mmcv's
    ``rescale_size``, mmdetection's keep-ratio Resize)."""
    if rounding in ("floor", "scaled_round"):
        scale = resize_scale(height, width, min_size, max_size)
        if rounding == "scaled_round":
            return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))
        return max(1, math.floor(height * scale)), max(1, math.floor(width * scale))
    if rounding != "round":
        raise ValueError(f"unknown resize rounding '{rounding}'; valid: {', '.join(ROUNDINGS)}")
    size = float(min_size)
    scale = size / min(height, width)
    if height < width:
        new_h, new_w = size, scale * width
    else:
        new_h, new_w = scale * height, size
    if max(new_h, new_w) > max_size:
        scale = float(max_size) / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)
