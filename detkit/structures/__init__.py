from .boxes import BoxCoder, box_iou, clip_boxes, nonempty
from .image_list import ImageList

__all__ = [
    "BoxCoder",
    "ImageList",
    "box_iou",
    "clip_boxes",
    "nonempty",
]
