"""Faster R-CNN: preprocess -> backbone (-> neck) -> RPN -> RoI heads -> postprocess.

Input: a list of samples (see docs/architecture.md), each with an already-resized "image"
(3, H, W) in 0..255 and the original "height"/"width". Training returns a dict of losses;
inference returns one dict per image with boxes in original-image pixels.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.onnx import operators as onnx_operators

from ..structures import ImageList


class FasterRCNN(nn.Module):
    def __init__(
        self,
        *,
        backbone: nn.Module,
        neck: Optional[nn.Module],
        rpn: nn.Module,
        roi_heads: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int = 32,
        class_names: Optional[List[str]] = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.rpn = rpn
        self.roi_heads = roi_heads
        # mean/std are configured in 0..255 units but applied to x / 255, the exact arithmetic of
        # torchvision's transform: a randomly initialised detector is chaotic enough that a
        # different rounding order flips NMS decisions (see tests/modeling/test_torchvision_parity.py).
        mean = torch.tensor(pixel_mean, dtype=torch.float64) / 255
        std = torch.tensor(pixel_std, dtype=torch.float64) / 255
        self.register_buffer("pixel_mean", mean.float().view(-1, 1, 1), False)
        self.register_buffer("pixel_std", std.float().view(-1, 1, 1), False)
        self.size_divisibility = size_divisibility
        self.class_names = (
            list(class_names) if class_names else [str(i) for i in range(roi_heads.num_classes)]
        )

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, batch: List[dict]) -> ImageList:
        """Normalise each image, resize it by the sample's "scale" if it has one (test time: the
        image arrives at its original size, so the resize runs on the model's device), then pad
        the batch to a multiple of size_divisibility with zeros. A traced export passes the scale
        as a tensor computed from the input's shape (``detkit.export``)."""
        images = []
        for s in batch:
            x = (
                s["image"].to(self.device, non_blocking=True).float() / 255.0 - self.pixel_mean
            ) / self.pixel_std
            scale = s.get("scale")
            if isinstance(scale, Tensor):  # traced export: the scale is computed in the graph
                x = resize_traced(x, scale)
            elif scale is not None and float(scale) != 1.0:
                x = F.interpolate(
                    x[None],
                    scale_factor=float(scale),
                    mode="bilinear",
                    recompute_scale_factor=True,
                    align_corners=False,
                )[0]
            images.append(x)
        return ImageList.from_tensors(images, self.size_divisibility)

    def extract_features(self, images: ImageList) -> Dict[str, Tensor]:
        features = self.backbone(images.tensor)
        return self.neck(features) if self.neck is not None else features

    def forward(self, batch: List[dict]):
        return self.loss(batch) if self.training else self.predict(batch)

    def loss(self, batch: List[dict]) -> Dict[str, Tensor]:
        images = self.preprocess(batch)
        gt_boxes = [s["gt_boxes"].to(self.device, torch.float32).reshape(-1, 4) for s in batch]
        gt_labels = [s["gt_labels"].to(self.device, torch.int64).reshape(-1) for s in batch]
        for s, labels in zip(batch, gt_labels):
            if len(labels) and (labels.min() < 0 or labels.max() >= self.roi_heads.num_classes):
                raise ValueError(
                    f"image {s.get('image_id')}: gt_labels must be in 0..{self.roi_heads.num_classes - 1}, "
                    f"got {labels.tolist()}"
                )
        features = self.extract_features(images)
        proposals, rpn_losses = self.rpn(images, features, gt_boxes)
        _, roi_losses = self.roi_heads(images, features, proposals, gt_boxes, gt_labels)
        return {**rpn_losses, **roi_losses}

    @torch.no_grad()
    def predict(self, batch: List[dict]) -> List[Dict[str, Tensor]]:
        images = self.preprocess(batch)
        features = self.extract_features(images)
        proposals, _ = self.rpn(images, features)
        detections, _ = self.roi_heads(images, features, proposals)
        return [
            self.rescale(d, size, s) for d, size, s in zip(detections, images.image_sizes, batch)
        ]

    @staticmethod
    def rescale(detections, resized_size, sample: dict) -> Dict[str, Tensor]:
        """Map boxes from the resized network input back to the original image (as torchvision).
        Sizes are ints, or 0-dim tensors traced from the input's shape when exporting."""
        boxes, scores, labels = detections
        h, w = sample.get("height", resized_size[0]), sample.get("width", resized_size[1])
        ratio_h = _float32(h) / _float32(resized_size[0])
        ratio_w = _float32(w) / _float32(resized_size[1])
        scale = torch.stack([ratio_w, ratio_h, ratio_w, ratio_h]).to(boxes.device)
        return {"boxes": boxes.float() * scale, "scores": scores.float(), "labels": labels}


def _float32(size) -> Tensor:
    """An image side (int, or a 0-dim tensor traced from the input's shape) as a float32 tensor."""
    if isinstance(size, Tensor):
        return size.float()
    return torch.tensor(size, dtype=torch.float32)


def resize_traced(x: Tensor, scale: Tensor) -> Tensor:
    """The eager resize (``scale_factor=scale, recompute_scale_factor=True``: output size
    floor(side * scale) in double) with the size computed from the traced shape, so that one traced
    graph resizes every input size. ``scale`` is a 1-element float64 tensor: ONNX re-types 0-dim
    values to float32 and writes ``number / tensor`` as a reciprocal product, either of which rounds
    differently from Python's double and can make floor() land one pixel lower."""
    hw = onnx_operators.shape_as_tensor(x)[-2:].double()
    size = torch.floor(hw * scale).long()
    return F.interpolate(x[None], size=(size[0], size[1]), mode="bilinear", align_corners=False)[0]
