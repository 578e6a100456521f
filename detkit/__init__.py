"""detkit: Faster R-CNN on ResNet backbones in plain PyTorch."""
__version__ = "0.1.0"
