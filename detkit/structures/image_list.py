"""A batch of images of different sizes padded into one tensor, with each image's real size."""

from __future__ import annotations

import math
from typing import List, Tuple

from torch import Tensor


class ImageList:
    """``tensor`` is (N, C, H, W) padded with zeros; ``image_sizes[i]`` = (h, w) before padding."""

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
        """Pad (C, H, W) tensors to the largest H and W, rounded up to a multiple of size_divisibility."""
        if not tensors:
            raise ValueError("ImageList.from_tensors needs at least one image")
        sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors]
        max_h = max(s[0] for s in sizes)
        max_w = max(s[1] for s in sizes)
        if size_divisibility > 1:
            max_h = int(math.ceil(max_h / size_divisibility) * size_divisibility)
            max_w = int(math.ceil(max_w / size_divisibility) * size_divisibility)
        if len(tensors) == 1 and sizes[0] == (max_h, max_w):
            return cls(tensors[0][None], sizes)
        batch = tensors[0].new_full((len(tensors), tensors[0].shape[0], max_h, max_w), pad_value)
        for img, out in zip(tensors, batch):
            out[:, : img.shape[-2], : img.shape[-1]].copy_(img)
        return cls(batch, sizes)
