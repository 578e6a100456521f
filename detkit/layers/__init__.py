"""The kernels the model calls through plain functions (as detectron2's ``layers/``): NMS and RoI
pooling. Each is torchvision's operator, with what detkit needs around it (one NMS per group while
tracing); a faster CPU kernel, if one is ever added, goes here and nowhere else."""

from .nms import batched_nms, nms
from .roi_ops import roi_align, roi_pool

__all__ = ["batched_nms", "nms", "roi_align", "roi_pool"]
