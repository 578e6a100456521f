"""Anchors: a set of reference boxes at every position of every feature map.

Cell anchors are zero-centred boxes of each (aspect ratio, size) pair, ratio-major, rounded to
integers (h/w = ratio, area = size^2). Anchors for a feature map of grid (H, W) are the cell anchors
shifted to (x * stride_w, y * stride_h) for every grid cell, cell-major: index = (y * W + x) * A + a.
The stride of a level is the padded image size // grid size, so odd top levels (P6) get the same
anchors as torchvision's AnchorGenerator.

The same code serves the eager model and a traced export: while tracing, the grid and image sizes
arrive as tensors (``Tensor.shape`` is traced), so the grids follow the input's shape; the cache,
which would hand the trace one size's anchors as constants, is used in eager mode only.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    sizes_t = torch.as_tensor(sizes, dtype=torch.float32)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * sizes_t[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * sizes_t[None, :]).reshape(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


class AnchorGenerator(nn.Module):
    """``sizes[i]`` are the anchor sizes of feature level i; the aspect ratios are shared."""

    def __init__(self, sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[float]):
        super().__init__()
        self.cell_anchors = [cell_anchors(s, aspect_ratios) for s in sizes]
        self._cache: Dict[Tuple, List[Tensor]] = {}

    @property
    def num_anchors_per_cell(self) -> int:
        counts = {len(c) for c in self.cell_anchors}
        if len(counts) != 1:
            raise ValueError(
                "every level must have the same number of anchors per cell (one shared RPN head)"
            )
        return counts.pop()

    def forward(
        self, grid_sizes: List[Tuple[int, int]], image_size: Tuple[int, int], device
    ) -> List[Tensor]:
        """One (H*W*A, 4) tensor of anchors per level."""
        if len(grid_sizes) != len(self.cell_anchors):
            raise ValueError(
                f"{len(grid_sizes)} feature maps but anchor sizes for {len(self.cell_anchors)} levels"
            )
        if torch.jit.is_tracing():
            return [
                self._grid(g, image_size, c.to(device))
                for g, c in zip(grid_sizes, self.cell_anchors)
            ]
        key = (tuple(grid_sizes), tuple(image_size), str(device))
        if key not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[key] = [
                self._grid(g, image_size, c.to(device))
                for g, c in zip(grid_sizes, self.cell_anchors)
            ]
        return self._cache[key]

    @staticmethod
    def _grid(grid: Tuple[int, int], image_size: Tuple[int, int], base: Tensor) -> Tensor:
        gh, gw = grid
        sh, sw = image_size[0] // gh, image_size[1] // gw
        xs = torch.arange(gw, dtype=torch.int32, device=base.device) * sw
        ys = torch.arange(gh, dtype=torch.int32, device=base.device) * sh
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack((x.reshape(-1), y.reshape(-1), x.reshape(-1), y.reshape(-1)), dim=1)
        return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)
