"""Anchors: a set of reference boxes at every position of every feature map.

Cell anchors are zero-centred boxes of each (aspect ratio, size) pair (h/w = ratio, area = size^2).
By default they are torchvision's: ratio-major, computed in float32 and rounded to integers.
``rounded=False`` gives detectron2's: computed in Python doubles (w = sqrt(size^2 / ratio),
h = ratio * w) and not rounded; ``order="size_major"`` is detectron2's order (index = size_index *
R + ratio_index), which its RPN heads' output channels follow. Anchors for a feature map of grid
(H, W) are the cell anchors shifted to ((x + offset) * stride_w, (y + offset) * stride_h) for every
grid cell, cell-major: index = (y * W + x) * A + a. Without explicit ``strides`` the stride of a
level is the padded image size // grid size (torchvision's rule: odd top levels such as P6 then get
torchvision's anchors); detectron2 uses the architecture's strides, which is also the only right
rule when the batch is not padded to a multiple of the largest stride (``size_divisibility`` 0).

The same code serves the eager model and a traced export: while tracing, the grid and image sizes
arrive as tensors (``Tensor.shape`` is traced), so the grids follow the input's shape; the cache,
which would hand the trace one size's anchors as constants, is used in eager mode only.

The cache may be read and filled by several threads at once (images side by side): it is only ever
read with ``dict.get`` and written one key at a time, and it is replaced by a new dict when full,
never cleared in place, so a thread holding the old one still finds what it put there. Two threads
that miss on the same key both compute it (the same anchors): cheaper than a lock, which would also
keep the module from being copied or pickled.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

ORDERS = ("ratio_major", "size_major")
MAX_CACHED_SIZES = 64  # (grid sizes, image size) pairs kept per generator: COCO has many sizes


def cell_anchors(
    sizes: Sequence[float],
    aspect_ratios: Sequence[float],
    *,
    rounded: bool = True,
    order: str = "ratio_major",
) -> Tensor:
    """(A, 4) zero-centred anchors, A = len(sizes) * len(aspect_ratios), in ``order``."""
    if order not in ORDERS:
        raise ValueError(f"unknown anchor order '{order}'; valid: {', '.join(ORDERS)}")
    if rounded:  # torchvision's float32 arithmetic, then rounded to whole pixels
        sizes_t = torch.as_tensor(sizes, dtype=torch.float32)
        ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1 / h_ratios
        ws = w_ratios[:, None] * sizes_t[None, :]  # (R, S)
        hs = h_ratios[:, None] * sizes_t[None, :]
        if order == "size_major":
            ws, hs = ws.T, hs.T
        ws, hs = ws.reshape(-1), hs.reshape(-1)
        return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()
    # detectron2's arithmetic in doubles, cast to float32 once: the anchors are then equal to its
    # own to the last bit (a 45.25 px wide anchor stays 45.25, torchvision's rounding makes it 46)
    pairs = (
        [(s, r) for s in sizes for r in aspect_ratios]
        if order == "size_major"
        else [(s, r) for r in aspect_ratios for s in sizes]
    )
    anchors = []
    for size, ratio in pairs:
        w = math.sqrt(float(size) ** 2.0 / ratio)
        h = ratio * w
        anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors, dtype=torch.float64).float()


class AnchorGenerator(nn.Module):
    """``sizes[i]`` are the anchor sizes of feature level i; the aspect ratios are shared.

    rounded / order: the cell anchors (see the module docstring). strides: one per level, or empty
    for padded size // grid. offset: the anchor centre within its cell, in strides (0 = the cell's
    top-left corner, torchvision's and detectron2's default)."""

    def __init__(
        self,
        sizes: Sequence[Sequence[float]],
        aspect_ratios: Sequence[float],
        *,
        rounded: bool = True,
        order: str = "ratio_major",
        strides: Sequence[int] = (),
        offset: float = 0.0,
    ):
        super().__init__()
        if strides and len(strides) != len(sizes):
            raise ValueError(
                f"anchor strides {list(strides)} must give one stride per level "
                f"({len(sizes)} levels of anchor sizes)"
            )
        if not 0.0 <= offset < 1.0:
            raise ValueError(f"anchor offset must be in [0, 1), got {offset}")
        self.cell_anchors = [
            cell_anchors(s, aspect_ratios, rounded=rounded, order=order) for s in sizes
        ]
        self.strides = [int(s) for s in strides]
        self.offset = float(offset)
        self._cache: Dict[Tuple, List[Tensor]] = {}  # see the module docstring

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
            return self._anchors(grid_sizes, image_size, device)
        # inference-mode tensors cannot be saved for backward: a training step after an evaluation
        # under torch.inference_mode must not get the evaluation's anchors
        key = (
            tuple(grid_sizes),
            tuple(image_size),
            str(device),
            torch.is_inference_mode_enabled(),
        )
        cache = self._cache
        anchors = cache.get(key)
        if anchors is None:
            anchors = self._anchors(grid_sizes, image_size, device)
            if len(cache) >= MAX_CACHED_SIZES:
                cache = self._cache = {}
            cache[key] = anchors
        return anchors

    def _anchors(self, grid_sizes, image_size, device) -> List[Tensor]:
        strides = self.strides or [None] * len(grid_sizes)
        return [
            self._grid(g, image_size, c.to(device), st)
            for g, c, st in zip(grid_sizes, self.cell_anchors, strides)
        ]

    def _grid(
        self, grid: Tuple[int, int], image_size: Tuple[int, int], base: Tensor, stride
    ) -> Tensor:
        gh, gw = grid
        sh, sw = (image_size[0] // gh, image_size[1] // gw) if stride is None else (stride, stride)
        xs = torch.arange(gw, dtype=torch.int32, device=base.device) * sw
        ys = torch.arange(gh, dtype=torch.int32, device=base.device) * sh
        if self.offset:
            xs, ys = xs + self.offset * sw, ys + self.offset * sh
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack((x.reshape(-1), y.reshape(-1), x.reshape(-1), y.reshape(-1)), dim=1)
        return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)
