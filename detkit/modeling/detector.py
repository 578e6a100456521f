"""Faster R-CNN: preprocess -> backbone (-> neck) -> RPN -> RoI heads -> postprocess.

Input: a list of samples (see docs/architecture.md), each with an RGB "image" (3, H, W) in 0..255
and the original "height"/"width"; test samples carry the original image and the size to resize it
to. Training returns a dict of losses; inference returns one dict per image with boxes in
original-image pixels.

Preprocessing and postprocessing follow torchvision by default (normalise x / 255, resize the float
tensor, rescale boxes only). The options a model trained elsewhere needs are constructor arguments:
``input_format="BGR"`` (detectron2/Caffe weights see BGR; the sample's channels are flipped here),
``pixel_divisor=1.0`` (normalise (x - mean) / std in 0..255 units, MSRA's std 1),
``resize_interpolation="pil_bilinear"`` (resize the uint8 image with PIL before normalising, as
detectron2's ResizeShortestEdge does; ``"cv2_bilinear"``: OpenCV's INTER_LINEAR on the uint8 image,
mmdetection's Resize), ``rescale_clip`` / ``rescale_drop_empty`` (clip the rescaled
boxes to the original image and drop the empty ones, detectron2's detector_postprocess).
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.onnx import operators as onnx_operators

from ..structures import ImageList, clip_boxes

INPUT_FORMATS = ("RGB", "BGR")
RESIZE_INTERPOLATIONS = ("tensor_bilinear", "pil_bilinear", "cv2_bilinear")


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
        input_format: str = "RGB",
        pixel_divisor: float = 255.0,
        resize_interpolation: str = "tensor_bilinear",
        rescale_clip: bool = False,
        rescale_drop_empty: bool = False,
    ):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.rpn = rpn
        self.roi_heads = roi_heads
        if input_format not in INPUT_FORMATS:
            raise ValueError(
                f"unknown input_format '{input_format}'; valid: {', '.join(INPUT_FORMATS)}"
            )
        if resize_interpolation not in RESIZE_INTERPOLATIONS:
            raise ValueError(
                f"unknown resize_interpolation '{resize_interpolation}'; valid: "
                f"{', '.join(RESIZE_INTERPOLATIONS)}"
            )
        if pixel_divisor <= 0:
            raise ValueError(f"pixel_divisor must be > 0, got {pixel_divisor}")
        self.input_format = input_format
        self.pixel_divisor = float(pixel_divisor)
        self.resize_interpolation = resize_interpolation
        self.rescale_clip = rescale_clip
        self.rescale_drop_empty = rescale_drop_empty
        # mean/std are configured in 0..255 units (in the model's channel order) and applied to
        # x / pixel_divisor: with 255 the exact arithmetic of torchvision's transform, with 1.0
        # detectron2's (x - mean) / std. A randomly initialised detector is chaotic enough that a
        # different rounding order flips NMS decisions (see tests/modeling/test_torchvision_parity.py).
        mean = torch.tensor(pixel_mean, dtype=torch.float64) / self.pixel_divisor
        std = torch.tensor(pixel_std, dtype=torch.float64) / self.pixel_divisor
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
        """Resize each test image to the sample's "size" (or by its "scale"), normalise it, then
        pad the batch to a multiple of size_divisibility with zeros. The tensor resize runs after
        normalising, on the model's device (torchvision's order); the PIL resize runs on the uint8
        image before it (detectron2's). A traced export passes the scale as a tensor computed from
        the input's shape (``detkit.export``)."""
        images = []
        for s in batch:
            image, size, scale = s["image"], s.get("size"), s.get("scale")
            if self.resize_interpolation != "tensor_bilinear" and (size or scale is not None):
                resize = pil_resize if self.resize_interpolation == "pil_bilinear" else cv2_resize
                image = resize(image, size or _floor_size(image.shape[-2:], scale))
                size, scale = None, None
            x = image.to(self.device, non_blocking=True).float()
            if self.input_format == "BGR":  # samples are RGB
                x = x.flip(0)
            x = (x / self.pixel_divisor - self.pixel_mean) / self.pixel_std
            if size is not None:
                if tuple(size) != tuple(x.shape[-2:]):
                    x = F.interpolate(
                        x[None], size=tuple(size), mode="bilinear", align_corners=False
                    )[0]
            elif isinstance(scale, Tensor):  # traced export: the scale is computed in the graph
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

    def rescale(self, detections, resized_size, sample: dict) -> Dict[str, Tensor]:
        """Map boxes from the resized network input back to the original image (as torchvision);
        with rescale_clip / rescale_drop_empty then clip them to the original image and drop the
        boxes left without area (as detectron2, after its top-k: fewer detections may remain).
        Sizes are ints, or 0-dim tensors traced from the input's shape when exporting."""
        boxes, scores, labels = detections
        h, w = sample.get("height", resized_size[0]), sample.get("width", resized_size[1])
        ratio_h = _float32(h) / _float32(resized_size[0])
        ratio_w = _float32(w) / _float32(resized_size[1])
        scale = torch.stack([ratio_w, ratio_h, ratio_w, ratio_h]).to(boxes.device)
        boxes, scores = boxes.float() * scale, scores.float()
        if self.rescale_clip:
            boxes = clip_boxes(boxes, (h, w))
        if self.rescale_drop_empty:
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        return {"boxes": boxes, "scores": scores, "labels": labels}


def _uint8_resize(image: Tensor, size: Sequence[int], method: str, fn) -> Tensor:
    """``fn(hwc uint8 array, (w, h))`` on a uint8 (3, H, W) image, back as a (3, h, w) tensor."""
    if image.dtype != torch.uint8:
        raise ValueError(f"resize_interpolation '{method}' resizes uint8 images, got {image.dtype}")
    h, w = int(size[0]), int(size[1])
    resized = fn(np.ascontiguousarray(image.cpu().numpy().transpose(1, 2, 0)), (w, h))
    return torch.from_numpy(np.ascontiguousarray(np.asarray(resized).transpose(2, 0, 1)))


def pil_resize(image: Tensor, size: Sequence[int]) -> Tensor:
    """Resize a uint8 (3, H, W) image to ``size`` (h, w) with PIL's bilinear filter, detectron2's
    test-time resize. PIL's BILINEAR widens its support when shrinking (antialiased) and rounds to
    uint8: neither F.interpolate(bilinear) nor torch's antialias path gives the same bytes. PIL
    works per channel, so resizing RGB and flipping to BGR afterwards equals resizing BGR."""
    return _uint8_resize(
        image, size, "pil_bilinear", lambda a, wh: Image.fromarray(a).resize(wh, Image.BILINEAR)
    )


def cv2_resize(image: Tensor, size: Sequence[int]) -> Tensor:
    """Resize a uint8 (3, H, W) image to ``size`` (h, w) with OpenCV's INTER_LINEAR, mmdetection's
    test-time resize (mmcv.imrescale). Unlike PIL, OpenCV does not widen the filter when shrinking
    and rounds its fixed-point result to uint8. Per channel, so RGB or BGR give the same bytes."""
    import cv2  # albumentations' dependency; only this resize needs it

    return _uint8_resize(
        image, size, "cv2_bilinear", lambda a, wh: cv2.resize(a, wh, interpolation=cv2.INTER_LINEAR)
    )


def _floor_size(shape, scale) -> tuple:
    """The size F.interpolate(scale_factor=scale, recompute_scale_factor=True) resizes to."""
    if isinstance(scale, Tensor):
        raise ValueError("resize_interpolation 'pil_bilinear'/'cv2_bilinear' cannot be traced")
    return tuple(int(math.floor(side * float(scale))) for side in shape)


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
