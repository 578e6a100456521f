"""Balanced sampling of positives and negatives for the RPN and RoI losses."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor


def sample_balanced(
    labels: Tensor, batch_size: int, positive_fraction: float
) -> Tuple[Tensor, Tensor]:
    """Pick at most ``batch_size * positive_fraction`` positives (labels == 1) at random and fill the
    rest of ``batch_size`` with negatives (labels == 0); -1 is never sampled.

    Returns the indices of the sampled positives and negatives. Uses the global torch RNG, so a
    seeded run samples the same way every time.
    """
    positive = torch.where(labels == 1)[0]
    negative = torch.where(labels == 0)[0]
    num_pos = min(positive.numel(), int(batch_size * positive_fraction))
    num_neg = min(negative.numel(), batch_size - num_pos)
    perm_pos = torch.randperm(positive.numel(), device=labels.device)[:num_pos]
    perm_neg = torch.randperm(negative.numel(), device=labels.device)[:num_neg]
    return positive[perm_pos], negative[perm_neg]
