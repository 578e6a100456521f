"""detkit: Faster R-CNN on ResNet backbones (C4 and FPN) in plain PyTorch."""

from .version import __version__


def __getattr__(name):  # lazy, so `import detkit.config` stays light
    if name == "Detector":
        from .api import Detector

        return Detector
    raise AttributeError(name)


__all__ = ["Detector", "__version__"]
