"""detectron2 weights in detkit: parameter names, class names, and MSRA's Caffe2 ImageNet backbones.

Three kinds of files come from detectron2's world, all read by ``detkit.checkpoint.load_checkpoint``
(which calls :func:`to_detkit_checkpoint` here, so every place that accepts a checkpoint accepts
them, converted in memory; ``detkit.checkpoint.convert`` writes them as detkit files):

- model-zoo files ``model_final_*.pkl``: a pickle of ``{"model": {name: numpy array}, "__author__":
  ...}``; and detectron2's own training outputs ``model_*.pth`` (``{"model": tensors, "optimizer",
  "iteration", ...}``). Both carry detectron2's parameter names, renamed here to detkit's. No tensor
  is reordered: detkit's detectron2 configs use detectron2's anchor order (size-major) and its
  predictor layout (background logit last, 4 deltas per foreground class) is detkit's own.
- Caffe2 ImageNet backbones (``R-50.pkl``, ``R-101.pkl``; ``res2_0_branch2a_w`` ...): renamed to
  torchvision's ResNet names, the form ``model.backbone.weights`` takes, so the backbone can be
  initialised as the paper's authors did.

The mapping needs no config: each design is recognisable from its names alone (the C4 design's
res5 sits in ``roi_heads.res5``, FPN's ResNet in ``backbone.bottom_up``).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from detkit.errors import CheckpointError
from detkit.utils.voc_files import VOC_CLASSES

from .torchvision_names import COCO_TORCHVISION_NAMES

# detectron2's COCO models have 80 outputs in COCO category-id order: torchvision's 90-id list
# without its unused ids
COCO_NAMES = [n for n in COCO_TORCHVISION_NAMES if n != "N/A"]

# detectron2 keeps these in some zoo files; they are not parameters (the config defines them)
_D2_DROPPED = re.compile(
    r"^(pixel_mean|pixel_std|proposal_generator\.anchor_generator\.cell_anchors\.\d+)$"
    r"|num_batches_tracked$"
)


def default_class_names(num_classes: int) -> Optional[List[str]]:
    """The class names a detectron2 file with ``num_classes`` outputs was trained on, when its zoo
    says so: COCO's 80 (every COCO-Detection model) or Pascal VOC's 20; else None."""
    if num_classes == len(COCO_NAMES):
        return list(COCO_NAMES)
    if num_classes == len(VOC_CLASSES):
        return list(VOC_CLASSES)
    return None


# ---------------------------------------------------------------------------------------------
# detectron2 detector names -> detkit names


def _block(rest: str) -> Optional[str]:
    """Rename inside one ResNet: ``stem.conv1[.norm]``, ``res{s}.{b}.conv{k}[.norm]`` and
    ``res{s}.{b}.shortcut[.norm]`` -> torchvision's ``conv1``/``bn1``, ``layer{s-1}.{b}.conv{k}``/
    ``bn{k}``, ``downsample.0``/``downsample.1``. None when ``rest`` is not a ResNet name."""
    m = re.fullmatch(r"stem\.conv1\.(norm\.)?(\w+)", rest)
    if m:
        return ("bn1." if m.group(1) else "conv1.") + m.group(2)
    m = re.fullmatch(r"res(\d)\.(\d+)\.(.+)", rest)
    if not m:
        return None
    inner = _unit(m.group(3))
    return None if inner is None else f"layer{int(m.group(1)) - 1}.{m.group(2)}.{inner}"


def _unit(name: str) -> Optional[str]:
    """``conv2.norm.bias`` -> ``bn2.bias``, ``shortcut.weight`` -> ``downsample.0.weight``..."""
    m = re.fullmatch(r"conv(\d)\.(norm\.)?(\w+)", name)
    if m:
        return f"{'bn' if m.group(2) else 'conv'}{m.group(1)}.{m.group(3)}"
    m = re.fullmatch(r"shortcut\.(norm\.)?(\w+)", name)
    if m:
        return f"downsample.{1 if m.group(1) else 0}.{m.group(2)}"
    return None


def _res5_head(rest: str) -> Optional[str]:
    m = re.fullmatch(r"(\d+)\.(.+)", rest)
    inner = _unit(m.group(2)) if m else None
    return None if inner is None else f"roi_heads.box_head.res5.{m.group(1)}.{inner}"


def _fpn(kind: str) -> Callable[[str], Optional[str]]:
    # detectron2 names FPN levels by stage (2..5); detkit's lists start at the first input feature
    def rename(rest: str) -> Optional[str]:
        m = re.fullmatch(r"(\d)\.(weight|bias)", rest)
        return None if m is None else f"neck.{kind}.{int(m.group(1)) - 2}.{m.group(2)}"

    return rename


def _fc(rest: str) -> Optional[str]:
    # FastRCNNConvFCHead's fc1/fc2 are torchvision's (and detkit's) TwoMLPHead fc6/fc7
    m = re.fullmatch(r"fc(\d)\.(weight|bias)", rest)
    return None if m is None else f"roi_heads.box_head.fc{int(m.group(1)) + 5}.{m.group(2)}"


def _prefix(new: str) -> Callable[[str], Optional[str]]:
    return lambda rest: new + rest


# (detectron2 prefix, rename of the rest); the first matching prefix wins
_D2_RULES: List[Tuple[str, Callable[[str], Optional[str]]]] = [
    ("backbone.bottom_up.", lambda r: None if _block(r) is None else "backbone." + _block(r)),
    ("backbone.fpn_lateral", _fpn("lateral_convs")),
    ("backbone.fpn_output", _fpn("output_convs")),
    ("backbone.", lambda r: None if _block(r) is None else "backbone." + _block(r)),
    ("roi_heads.res5.", _res5_head),
    ("roi_heads.box_head.", _fc),
    ("roi_heads.box_predictor.", _prefix("roi_heads.predictor.")),
    ("proposal_generator.rpn_head.conv.", _prefix("rpn.head.conv.")),
    ("proposal_generator.rpn_head.objectness_logits.", _prefix("rpn.head.objectness.")),
    ("proposal_generator.rpn_head.anchor_deltas.", _prefix("rpn.head.deltas.")),
]


def is_detectron2_state(state: Dict[str, Any]) -> bool:
    """Whether a state dict carries detectron2's detector names: every detectron2 Faster R-CNN has
    a ``proposal_generator`` (torchvision's, which shares ``roi_heads.box_predictor``, has ``rpn``)."""
    return any(k.startswith("proposal_generator.") for k in state)


def _tensor(value: Union[Tensor, np.ndarray], key: str, path) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray):
        # a copy: arrays unpickled from a file may be read-only, and the model must own its memory
        return torch.from_numpy(np.array(value))
    raise CheckpointError(f"{path}: '{key}' holds a {type(value).__name__}, not an array")


def detectron2_to_detkit(state: Dict[str, Any], path="the file") -> Dict[str, Tensor]:
    """A detectron2 detector state dict (numpy arrays or tensors) with detkit's names."""
    out = {}
    for key, value in state.items():
        key = key[len("module.") :] if key.startswith("module.") else key  # a DDP-wrapped save
        if _D2_DROPPED.search(key):
            continue
        new = next((rename(key[len(p) :]) for p, rename in _D2_RULES if key.startswith(p)), None)
        if new is None:
            raise CheckpointError(
                f"{path}: detectron2 parameter '{key}' has no detkit counterpart; detkit converts "
                "the Faster R-CNN designs of detectron2's model zoo (C4, DC5, FPN, ResNeXt FPN: "
                "ResNet backbone, StandardRPNHead, Res5ROIHeads or a 2-fc box head)"
            )
        out[new] = _tensor(value, key, path)
    return out


# ---------------------------------------------------------------------------------------------
# Caffe2 (MSRA / FAIR ImageNet) names -> torchvision ResNet names

_C2_DROPPED = re.compile(r"_momentum$|^fc1000_|^pred_|^conv1_b$")
_C2_BN = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}
_C2_BRANCH = {
    "branch2a": "conv1",
    "branch2b": "conv2",
    "branch2c": "conv3",
    "branch1": "downsample",
}


def is_caffe2_state(state: Dict[str, Any]) -> bool:
    """Whether a dict holds Caffe2 ImageNet blobs (``conv1_w``, ``res2_0_branch2a_w`` ...)."""
    return "conv1_w" in state and any(k.startswith("res2_0_branch") for k in state)


def _c2_name(key: str) -> Optional[str]:
    if key == "conv1_w":
        return "conv1.weight"
    m = re.fullmatch(r"res_conv1_bn_(s|b|rm|riv)", key)
    if m:
        return "bn1." + _C2_BN[m.group(1)]
    m = re.fullmatch(r"res(\d)_(\d+)_(branch2[abc]|branch1)_(w|bn_(?:s|b|rm|riv))", key)
    if not m:
        return None
    stage, block, branch, kind = m.groups()
    layer = f"layer{int(stage) - 1}.{block}."
    conv = _C2_BRANCH[branch]
    if kind == "w":
        return layer + (f"{conv}.0.weight" if conv == "downsample" else f"{conv}.weight")
    param = _C2_BN[kind[3:]]
    norm = "downsample.1" if conv == "downsample" else "bn" + conv[-1]
    return f"{layer}{norm}.{param}"


def caffe2_to_torchvision(state: Dict[str, Any], path="the file") -> Dict[str, Tensor]:
    """MSRA's Caffe2 ResNet blobs under torchvision's ResNet names (``model.backbone.weights``).

    Caffe2's affine batch norm has no running statistics (they are folded into scale and shift):
    each norm gets mean 0 and variance 1, as detectron2 gives them when it loads these files.
    """
    out = {}
    for key, value in state.items():
        if _C2_DROPPED.search(key):
            continue
        new = _c2_name(key)
        if new is None:
            raise CheckpointError(
                f"{path}: Caffe2 blob '{key}' is not part of a ResNet (expected conv1_w, "
                "res_conv1_bn_*, res<stage>_<block>_branch{1,2a,2b,2c}_{w,bn_s,bn_b})"
            )
        out[new] = _tensor(value, key, path).float()
    for key in [k for k in out if k.endswith(".weight") and _is_norm(k)]:
        base = key[: -len("weight")]
        out.setdefault(base + "running_mean", torch.zeros_like(out[key]))
        out.setdefault(base + "running_var", torch.ones_like(out[key]))
    return out


def _is_norm(key: str) -> bool:
    return bool(re.search(r"(^|\.)bn\d\.weight$|downsample\.1\.weight$", key))


# ---------------------------------------------------------------------------------------------
# a whole file


def to_detkit_checkpoint(obj: Dict[str, Any], path) -> Optional[Dict[str, Any]]:
    """A loaded file in detkit's form when it comes from detectron2 or Caffe2, else None.

    detectron2 detector -> ``{"model": detkit state dict, "class_names": COCO/VOC names when the
    class count says so, "source": ...}`` (the optimizer, scheduler and iteration of a training
    output are dropped: detkit cannot resume detectron2's training state); Caffe2 ImageNet
    blobs -> ``{"model": torchvision ResNet state dict, "source": ...}``.
    """
    state = obj.get("model", obj.get("blobs", obj))
    if not isinstance(state, dict):
        return None
    if is_detectron2_state(state):
        model = detectron2_to_detkit(state, path)
        out: Dict[str, Any] = {"model": model, "source": f"detectron2:{path}"}
        cls = model.get("roi_heads.predictor.cls_score.bias")
        names = default_class_names(int(cls.numel()) - 1) if cls is not None else None
        if names is not None:
            out["class_names"] = names
        return out
    if is_caffe2_state(state):
        return {"model": caffe2_to_torchvision(state, path), "source": f"caffe2-imagenet:{path}"}
    return None
