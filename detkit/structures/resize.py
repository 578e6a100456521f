"""The deterministic test-time scale: shorter side to min_size unless the longer side would exceed max_size."""
from __future__ import annotations

import torch


def test_scale(height: int, width: int, min_size: float, max_size: float) -> float:
    """scale = min(min_size / shorter side, max_size / longer side), computed in float32 like
    torchvision's GeneralizedRCNNTransform so that detkit resizes to exactly the same size."""
    sizes = torch.tensor([height, width], dtype=torch.float32)
    shorter, longer = float(torch.min(sizes)), float(torch.max(sizes))
    return float(torch.min(torch.tensor(min_size / shorter, dtype=torch.float32),
                           torch.tensor(max_size / longer, dtype=torch.float32)))


def scaled_size(height: int, width: int, scale: float):
    """The (h, w) that F.interpolate(scale_factor=scale, recompute_scale_factor=True) produces."""
    return int(height * scale), int(width * scale)
