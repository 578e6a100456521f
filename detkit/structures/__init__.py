from .boxes import BoxCoder, batched_nms, box_iou, clip_boxes, nms, nonempty
from .image_list import ImageList

__all__ = [
    "BoxCoder",
    "ImageList",
    "batched_nms",
    "box_iou",
    "clip_boxes",
    "nms",
    "nonempty",
]
