"""The traced module of a detkit Faster R-CNN export: the eager model behind a one-image signature.

``ExportableDetector(model, min_size=, max_size=)`` takes ONE image and returns its detections:

    input   image   uint8 (3, H, W), RGB, any H and W (the original image, not resized)
    output  boxes   float32 (D, 4)  XYXY in the input image's pixels
            scores  float32 (D,)    descending
            labels  int64 (D,)      0-based class index (model.class_names)

It runs ``FasterRCNN.predict`` itself. Tracing records tensor operations and freezes everything
computed in Python, so the model's code keeps every size-dependent value (resize, padding, anchor
grids, top-k sizes, per-level RoI counts, clipping sizes) derived from ``Tensor.shape``, which the
tracer records; one traced graph therefore serves every image size. What only exists here is the
part a sample gets from ``Detector.sample`` in eager mode: the resize scale, computed in the graph
from the input's shape. Not supported: iterative box refinement (its box voting is data-dependent)
and multi-scale/flip testing.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn
from torch.onnx import operators as onnx_operators

from detkit.errors import BackendError


class ExportableDetector(nn.Module):
    def __init__(self, model: nn.Module, *, min_size: int, max_size: int):
        super().__init__()
        if model.roi_heads.refine_iterations > 0:
            raise BackendError(
                "model.roi_heads.refine_iterations > 0 (iterative refinement with box voting) "
                "cannot be exported; export with model.roi_heads.refine_iterations=0"
            )
        self.model = model.eval()
        self.class_names = list(model.class_names)
        # 1-D float64, so that the scale is computed in double exactly like
        # structures.resize.resize_scale (see modeling.detector.resize_traced)
        self.register_buffer(
            "size_limits", torch.tensor([min_size, max_size], dtype=torch.float64), persistent=False
        )

    def sample(self, image: Tensor) -> dict:
        """``Detector.sample`` in tensors: the resize scale min(min_size / shorter side, max_size /
        longer side) and the original size, computed from the input's shape inside the graph."""
        hw = onnx_operators.shape_as_tensor(image)[-2:]
        sides = torch.cat([hw.min(0, keepdim=True)[0], hw.max(0, keepdim=True)[0]]).double()
        scale = (self.size_limits / sides).min(0, keepdim=True)[0]
        return {"image": image, "scale": scale, "height": hw[0], "width": hw[1]}

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        out = self.model.predict([self.sample(image)])[0]
        return out["boxes"], out["scores"], out["labels"]
