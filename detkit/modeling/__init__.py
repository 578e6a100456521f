from . import backbones, box_heads, poolers  # noqa: F401  (registers the implementations)
from .build import build_model
from .detector import FasterRCNN

__all__ = ["FasterRCNN", "build_model"]
