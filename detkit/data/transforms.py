"""Image transforms and the mappers that turn ``(record, image)`` into a sample (docs/architecture.md).

Inference: the mapper keeps the original image and computes the target size (and scale); the model
resizes it, by default on its own device with torchvision's ``GeneralizedRCNNTransform`` arithmetic
(docs/architecture.md). ``rounding`` picks how that size is rounded (``structures.resize.resize_size``:
torchvision's floor or detectron2's round-half-up).
Training: an albumentations 2.x pipeline (box-safe) -- shortest-edge resize with a cap on the longest
edge, horizontal flip, optional photometric jitter.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple, Union

# albumentations checks PyPI for a newer version on import (a 2 s network timeout when offline)
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from albumentations.core.type_definitions import Targets  # noqa: E402

# the shorter side to min_size unless the longer side would exceed max_size
from detkit.structures.resize import resize_scale, resize_size  # noqa: E402


class ResizeShortestEdge(A.DualTransform):
    """Resize so the shorter side is a random choice of ``min_sizes``, capped so the longer side is at
    most ``max_size``: the size of ``structures.resize.resize_size`` with the test-time resize's
    ``rounding`` (floor(side * scale) by default). One interpolation, boxes scaled per axis by
    new/old size.
    """

    _targets = (Targets.IMAGE, Targets.MASK, Targets.BBOXES)

    def __init__(
        self, min_sizes: Sequence[int], max_size: int, rounding: str = "floor", p: float = 1.0
    ):
        super().__init__(p=p)
        self.min_sizes = [int(s) for s in min_sizes]
        self.max_size = int(max_size)
        self.rounding = rounding
        if not self.min_sizes or min(self.min_sizes) <= 0 or self.max_size <= 0:
            raise ValueError(
                f"sizes must be positive, got min_sizes={min_sizes}, max_size={max_size}"
            )

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        h, w = params["shape"][:2]
        shorter = self.py_random.choice(self.min_sizes)
        return {"size": resize_size(h, w, shorter, self.max_size, self.rounding)}

    def apply(self, img: np.ndarray, size: Tuple[int, int] = (0, 0), **params) -> np.ndarray:
        return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)

    def apply_to_mask(
        self, mask: np.ndarray, size: Tuple[int, int] = (0, 0), **params
    ) -> np.ndarray:
        return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)

    def apply_to_bboxes(self, bboxes: np.ndarray, **params) -> np.ndarray:
        return bboxes  # albumentations keeps boxes normalised to 0..1 inside the pipeline

    def get_transform_init_args_names(self) -> Tuple[str, ...]:
        return ("min_sizes", "max_size", "rounding")


def build_train_augmentation(
    min_sizes: Sequence[int],
    max_size: int,
    hflip_prob: float = 0.5,
    color_jitter: float = 0.0,
    seed: Optional[int] = None,
    rounding: str = "floor",
) -> A.Compose:
    """The training pipeline; call it as ``aug(image=..., bboxes=(N,4) XYXY, labels=..., difficult=...)``."""
    transforms = [ResizeShortestEdge(min_sizes, max_size, rounding)]
    if hflip_prob > 0:
        transforms.append(A.HorizontalFlip(p=hflip_prob))
    if color_jitter > 0:
        s = float(color_jitter)
        transforms.append(
            A.ColorJitter(
                brightness=0.4 * s,
                contrast=0.4 * s,
                saturation=0.4 * s,
                hue=min(0.1 * s, 0.5),
                p=0.8,
            )
        )
    # clip + filter: boxes a geometric transform pushes (partly) outside the image are clipped, and
    # dropped once nothing of them is left (resize and flip never do, a future crop would)
    bbox_params = A.BboxParams(
        format="pascal_voc",
        label_fields=["labels", "difficult"],
        clip=True,
        filter_invalid_bboxes=True,
        min_area=0.0,
    )
    return A.Compose(transforms, bbox_params=bbox_params, seed=seed)


def _boxes_tensor(boxes) -> torch.Tensor:
    return torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))


class TrainMapper:
    """``(record, image) -> sample`` for training: box-safe resize, flip and jitter.

    Difficult boxes (VOC) are dropped unless ``keep_difficult``; crowd boxes are never training targets.
    ``set_seed`` re-seeds the augmentation (the loader calls it once per worker).
    """

    is_train = True

    def __init__(
        self,
        min_sizes: Union[int, Sequence[int]],
        max_size: int,
        hflip_prob: float = 0.5,
        color_jitter: float = 0.0,
        keep_difficult: bool = False,
        seed: Optional[int] = None,
        rounding: str = "floor",
    ):
        self.min_sizes = (
            [int(min_sizes)] if isinstance(min_sizes, (int, float)) else list(min_sizes)
        )
        self.max_size = int(max_size)
        self.keep_difficult = keep_difficult
        self.augment = build_train_augmentation(
            self.min_sizes, self.max_size, hflip_prob, color_jitter, seed, rounding
        )

    def set_seed(self, seed: int) -> None:
        self.augment.set_random_seed(int(seed) % (2**32))

    def __call__(self, record: dict, image: np.ndarray) -> dict:
        boxes = np.asarray(record["boxes"], dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(record["labels"], dtype=np.int64).reshape(-1)
        difficult = np.asarray(
            record.get("difficult", np.zeros(len(labels), bool)), dtype=bool
        ).reshape(-1)
        if not self.keep_difficult:
            boxes, labels, difficult = boxes[~difficult], labels[~difficult], difficult[~difficult]
        out = self.augment(image=image, bboxes=boxes, labels=labels, difficult=difficult)
        img = out["image"]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
            "image_id": int(record["image_id"]),
            "height": int(record["height"]),
            "width": int(record["width"]),
            "gt_boxes": _boxes_tensor(out["bboxes"]),
            "gt_labels": torch.as_tensor(np.asarray(out["labels"], dtype=np.int64).reshape(-1)),
        }

    def __repr__(self) -> str:
        return f"TrainMapper(min_sizes={self.min_sizes}, max_size={self.max_size}, augment={self.augment})"


class InferenceMapper:
    """``(record, image) -> sample`` for inference: the ORIGINAL image as a uint8 (3, H, W) tensor
    plus the deterministic target ``size`` (h, w) (rounded as ``rounding`` says) and ``scale``; the
    model resizes and normalises (docs/architecture.md). Multi-scale testing changes ``size`` and
    ``scale`` per pass, which is why the original image travels."""

    is_train = False

    def __init__(self, min_size: int, max_size: int, rounding: str = "floor"):
        self.min_size = int(min_size)
        self.max_size = int(max_size)
        resize_size(1, 1, 1, 1, rounding)  # an unknown rounding fails here, not per image
        self.rounding = rounding

    def __call__(self, record: dict, image: np.ndarray) -> dict:
        h, w = image.shape[:2]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "size": resize_size(h, w, self.min_size, self.max_size, self.rounding),
            "scale": resize_scale(h, w, self.min_size, self.max_size),
            "image_id": int(record["image_id"]),
            "height": int(record["height"]),
            "width": int(record["width"]),
        }

    def __repr__(self) -> str:
        return (
            f"InferenceMapper(min_size={self.min_size}, max_size={self.max_size}, "
            f"rounding={self.rounding!r})"
        )
