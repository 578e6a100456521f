"""The deterministic inference scale: shorter side to min_size unless the longer side would exceed
max_size."""

from __future__ import annotations


def resize_scale(height: int, width: int, min_size: float, max_size: float) -> float:
    """scale = min(min_size / shorter side, max_size / longer side), in Python floats (double) like
    torchvision's GeneralizedRCNNTransform in eager mode, so detkit resizes to exactly the same size
    (F.interpolate with recompute_scale_factor=True gives floor(side * scale))."""
    return min(float(min_size) / min(height, width), float(max_size) / max(height, width))
