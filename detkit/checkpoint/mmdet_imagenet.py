"""mmdetection's ImageNet initialisations (the ``init_cfg`` checkpoints of its configs) as
``model.backbone.weights`` files.

mmdet's ResNet and ResNeXt name their tensors as torchvision's ResNet does (``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer1.0.bn1``, ``layer1.0.downsample.0/1``; ResNeXt only groups the 3x3
``conv2``), so each file below loads into detkit's backbone by those names once the wrapping is
undone: a ``state_dict`` entry (read by ``reader.state_dict_of``), a ``module.`` prefix (a model
saved from DataParallel; mmengine strips it when loading) or ``backbone.`` (a detector's backbone),
and an ImageNet classifier (``fc.``) that no detector uses. The Caffe-style files (MSRA's ResNets,
FB's X-101-32x8d) were converted from Caffe2 ``.pkl`` blobs by mmdet's
``tools/model_converters/detectron2pytorch.py``: each affine-only norm is a BN with running mean 0
and variance 1, which detkit's FrozenBN computes alike.

What each file needs from the config (mmdet's own data preprocessor and ResNet ``style``):
``OPEN_MMLAB_IMAGENET`` lists them; configs/mmdetection/*.yaml name theirs in the header.
"""

from __future__ import annotations

import re
from typing import Dict, NamedTuple

from torch import Tensor


class ImageNetFile(NamedTuple):
    file: str  # the file name of the download
    url: str
    needs: str  # the preprocessing and stride the network was trained with


_MMLAB = "https://download.openmmlab.com/pretrain/third_party/"
_TORCHVISION = "https://download.pytorch.org/models/"
_PYTORCH = "RGB, torchvision's mean/std, stride on the 3x3 (model.backbone.stride_in_1x1=false)"
_CAFFE = "BGR, mean subtraction only (std 1), stride on the first 1x1 (stride_in_1x1=true)"

# mmdet's init_cfg checkpoint names (mmengine/hub/openmmlab.json, torchvision's model URLs)
OPEN_MMLAB_IMAGENET: Dict[str, ImageNetFile] = {
    "torchvision://resnet50": ImageNetFile(
        "resnet50-0676ba61.pth", _TORCHVISION + "resnet50-0676ba61.pth", _PYTORCH
    ),
    "torchvision://resnet101": ImageNetFile(
        "resnet101-63fe2227.pth", _TORCHVISION + "resnet101-63fe2227.pth", _PYTORCH
    ),
    # torchvision's IMAGENET1K_V2 ResNet-50 (the "TorchVision new recipe"): tnr-pretrain config
    "https://download.pytorch.org/models/resnet50-11ad3fa6.pth": ImageNetFile(
        "resnet50-11ad3fa6.pth", _TORCHVISION + "resnet50-11ad3fa6.pth", _PYTORCH
    ),
    "open-mmlab://detectron2/resnet50_caffe": ImageNetFile(
        "resnet50_msra-5891d200.pth", _MMLAB + "resnet50_msra-5891d200.pth", _CAFFE
    ),
    "open-mmlab://detectron2/resnet101_caffe": ImageNetFile(
        "resnet101_msra-6cc46731.pth", _MMLAB + "resnet101_msra-6cc46731.pth", _CAFFE
    ),
    "open-mmlab://resnext101_32x4d": ImageNetFile(
        "resnext101_32x4d-a5af3160.pth", _MMLAB + "resnext101_32x4d-a5af3160.pth", _PYTORCH
    ),
    "open-mmlab://resnext101_64x4d": ImageNetFile(
        "resnext101_64x4d-ee2c6f71.pth", _MMLAB + "resnext101_64x4d-ee2c6f71.pth", _PYTORCH
    ),
    "open-mmlab://detectron2/resnext101_32x8d": ImageNetFile(
        "resnext101_32x8d-1516f1aa.pth",
        _MMLAB + "resnext101_32x8d-1516f1aa.pth",
        "BGR, mean [103.53, 116.28, 123.675] and std [57.375, 57.12, 58.395] (FB's Caffe2 "
        "ResNeXt), stride on the 3x3 (stride_in_1x1=false)",
    ),
}

_WRAPPERS = re.compile(r"^(?:module\.)?(?:backbone\.)?")
_RESNET_NAME = re.compile(r"^(?:conv1|bn1|layer[1-4]\.\d+\.)")


def is_wrapped_resnet(state: Dict[str, Tensor]) -> bool:
    """A ResNet/ResNeXt state dict whose names carry ``module.`` or ``backbone.`` before
    torchvision's (``module.layer1.0.conv1.weight``): an mmcv/mmdet ImageNet file."""
    stripped = [_WRAPPERS.sub("", k, count=1) for k in state]
    return (
        any(s != k for s, k in zip(stripped, state))
        and any(s.startswith("layer1.") for s in stripped)
        and all(_RESNET_NAME.match(s) or s.startswith("fc.") for s in stripped)
    )


def imagenet_to_torchvision(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """An mmdet/mmcv ImageNet ResNet or ResNeXt state dict with torchvision's names (what
    ``torchvision_names.imagenet_to_detkit`` takes): wrapping prefixes removed, the classifier
    dropped. A state dict in torchvision's names comes back unchanged but for ``fc.``."""
    if not is_wrapped_resnet(state):
        return {k: v for k, v in state.items() if not k.startswith("fc.")}
    out = {}
    for k, v in state.items():
        name = _WRAPPERS.sub("", k, count=1)
        if not name.startswith("fc."):
            out[name] = v
    return out
