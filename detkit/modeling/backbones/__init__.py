from .fpn import FPN
from .norm import FrozenBatchNorm2d
from .resnet import ResNet

__all__ = ["FPN", "FrozenBatchNorm2d", "ResNet"]
