"""A batch of images of different sizes padded into one tensor, with each image's real size."""

from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


class ImageList:
    """``tensor`` is (N, C, H, W) padded with zeros; ``image_sizes[i]`` = (h, w) before padding
    (Python ints; 0-dim tensors while tracing)."""

    def __init__(self, tensor: Tensor, image_sizes: List[Tuple[int, int]]):
        self.tensor = tensor
        self.image_sizes = image_sizes

    def __len__(self) -> int:
        return len(self.image_sizes)

    @property
    def padded_size(self) -> Tuple[int, int]:
        return tuple(self.tensor.shape[-2:])

    @classmethod
    def from_tensors(
        cls, tensors: List[Tensor], size_divisibility: int = 0, pad_value: float = 0.0
    ) -> "ImageList":
        """Pad (C, H, W) tensors to the largest H and W, rounded up to a multiple of size_divisibility.

        Sizes are read from ``Tensor.shape`` without ``int()``: while tracing they are tensors, so a
        traced single-image graph pads every input size correctly (``F.pad`` by traced amounts)."""
        if not tensors:
            raise ValueError("ImageList.from_tensors needs at least one image")
        sizes = [(t.shape[-2], t.shape[-1]) for t in tensors]
        max_h = max(s[0] for s in sizes)
        max_w = max(s[1] for s in sizes)
        if size_divisibility > 1:
            max_h = (max_h + size_divisibility - 1) // size_divisibility * size_divisibility
            max_w = (max_w + size_divisibility - 1) // size_divisibility * size_divisibility
        if len(tensors) == 1:
            h, w = sizes[0]
            if not isinstance(h, Tensor) and (h, w) == (max_h, max_w):
                return cls(tensors[0][None], sizes)  # nothing to pad: no copy
            return cls(
                F.pad(tensors[0], (0, max_w - w, 0, max_h - h), value=pad_value)[None], sizes
            )
        batch = tensors[0].new_full((len(tensors), tensors[0].shape[0], max_h, max_w), pad_value)
        for img, out in zip(tensors, batch):
            out[:, : img.shape[-2], : img.shape[-1]].copy_(img)
        return cls(batch, sizes)

    def image_box(self, i: int) -> Tensor:
        """The box [0, 0, w, h] (float32, on the batch's device) covering image ``i``; traced from
        the input's shape while tracing, where ``image_sizes`` holds tensors."""
        h, w = self.image_sizes[i]
        if isinstance(h, Tensor):
            return torch.cat([torch.zeros(2), torch.stack([w, h]).float()]).to(self.tensor.device)
        return torch.tensor([0.0, 0.0, w, h], device=self.tensor.device)
