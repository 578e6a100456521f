"""mmdetection's Faster R-CNN weights in detkit: parameter names and class names.

mmdetection (2.x and 3.x) saves ``{"state_dict": {name: tensor}, "meta": {...}}`` (a training
output also holds ``optimizer``, ``message_hub``...). ``detkit.checkpoint.load_checkpoint`` calls
:func:`to_detkit_checkpoint` here, so an mmdetection ``.pth`` works wherever a checkpoint is
accepted (converted in memory); ``detkit.checkpoint.convert`` writes it as a detkit file.

The names map one to one, no tensor is reordered (checked against mmdet 3.3.0's modules):

- ``backbone.*``: mmdetection's ResNet/ResNeXt uses torchvision's names (``conv1``, ``bn1``,
  ``layer{1..4}.{b}.conv{k}/bn{k}/downsample.{0,1}``), detkit's own;
- ``neck.lateral_convs.{i}.conv.*`` / ``neck.fpn_convs.{i}.conv.*`` (ConvModule) ->
  ``neck.lateral_convs.{i}.*`` / ``neck.output_convs.{i}.*``;
- ``rpn_head.rpn_conv/rpn_cls/rpn_reg`` -> ``rpn.head.conv/objectness/deltas``: a sigmoid RPN has
  one logit per anchor, its anchors are ratio-major as detkit's mmdetection configs generate them;
- ``roi_head.bbox_head.shared_fcs.{0,1}`` -> ``roi_heads.box_head.fc6/fc7``, ``fc_cls`` /
  ``fc_reg`` -> ``roi_heads.predictor.cls_score`` / ``bbox_pred``: mmdetection's softmax has the
  background LAST (K + 1 logits) and 4 deltas per foreground class, which is detkit's layout;
- C4: ``roi_head.shared_head.layer4.*`` (res5 per region) -> ``roi_heads.box_head.res5.*``.

Half-precision tensors (the fp16 zoo file) become float32. Class names come from the file's meta:
``dataset_meta.classes`` (3.x) or ``CLASSES`` (2.x). A file of another mmdetection model (Mask
R-CNN, RetinaNet, Cascade R-CNN, ...) is a ``CheckpointError`` naming what it is.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Tuple

from torch import Tensor

from detkit.errors import CheckpointError

from .detectron2_names import default_class_names

# mmdetection keeps these beside the parameters (BN batch counters; EMA copies in some files)
_DROPPED = re.compile(r"num_batches_tracked$|^ema_")

_CONFIGS = "configs/mmdetection/"


def _neck(kind: str) -> Callable[[str], Optional[str]]:
    def rename(rest: str) -> Optional[str]:
        m = re.fullmatch(r"(\d+)\.conv\.(weight|bias)", rest)
        return None if m is None else f"neck.{kind}.{m.group(1)}.{m.group(2)}"

    return rename


def _shared_fc(rest: str) -> Optional[str]:
    m = re.fullmatch(r"(\d)\.(weight|bias)", rest)
    if m is None or int(m.group(1)) > 1:
        return None
    return f"roi_heads.box_head.fc{int(m.group(1)) + 6}.{m.group(2)}"


def _prefix(new: str) -> Callable[[str], Optional[str]]:
    return lambda rest: new + rest


# (mmdetection prefix, rename of the rest); the first matching prefix wins
_RULES: List[Tuple[str, Callable[[str], Optional[str]]]] = [
    ("backbone.", _prefix("backbone.")),
    ("neck.lateral_convs.", _neck("lateral_convs")),
    ("neck.fpn_convs.", _neck("output_convs")),
    ("rpn_head.rpn_conv.", _prefix("rpn.head.conv.")),
    ("rpn_head.rpn_cls.", _prefix("rpn.head.objectness.")),
    ("rpn_head.rpn_reg.", _prefix("rpn.head.deltas.")),
    ("roi_head.shared_head.layer4.", _prefix("roi_heads.box_head.res5.")),
    ("roi_head.bbox_head.shared_fcs.", _shared_fc),
    ("roi_head.bbox_head.fc_cls.", _prefix("roi_heads.predictor.cls_score.")),
    ("roi_head.bbox_head.fc_reg.", _prefix("roi_heads.predictor.bbox_pred.")),
]

# (a name that only that kind of model has, what it is), checked in this order
_OTHER_MODELS: List[Tuple[Callable[[str], bool], str]] = [
    (lambda k: k.startswith("roi_head.mask_head."), "a Mask R-CNN (roi_head.mask_head.*)"),
    (
        lambda k: re.match(r"roi_head\.bbox_head\.\d+\.", k) is not None,
        "a Cascade R-CNN (roi_head.bbox_head.<stage>.*: one box head per stage)",
    ),
    (lambda k: k.startswith("bbox_head.retina_cls."), "a RetinaNet (bbox_head.retina_cls.*)"),
    (
        lambda k: k.startswith("bbox_head.conv_cls."),
        "an FCOS-style detector (bbox_head.conv_cls.*)",
    ),
    (lambda k: k.startswith("bbox_head."), "a one-stage detector (bbox_head.*, no RPN)"),
    (lambda k: k.startswith("roi_head.bbox_head.convs."), "a detector with a conv box head"),
]


def is_mmdet_state(obj: Dict[str, Any]) -> bool:
    """Whether a loaded file is an mmdetection detector: ``state_dict`` with ``backbone.*`` and
    an mmdetection head (``rpn_head.*``, ``roi_head.*`` or ``bbox_head.*``)."""
    state = obj.get("state_dict")
    if not isinstance(state, dict):
        return False
    keys = [_strip(k) for k in state]
    return any(k.startswith("backbone.") for k in keys) and any(
        k.startswith(("rpn_head.", "roi_head.", "bbox_head.")) for k in keys
    )


def _strip(key: str) -> str:
    return key[len("module.") :] if key.startswith("module.") else key  # a DDP-wrapped save


def _what_model(keys: List[str]) -> Optional[str]:
    for test, what in _OTHER_MODELS:
        if any(test(k) for k in keys):
            return what
    return None


def mmdet_to_detkit(state: Dict[str, Any], path="the file") -> Dict[str, Tensor]:
    """An mmdetection Faster R-CNN state dict with detkit's names, float32."""
    keys = [_strip(k) for k in state]
    other = _what_model(keys)
    if other is not None:
        raise CheckpointError(
            f"{path} is an mmdetection checkpoint of {other}, not a Faster R-CNN; detkit loads "
            f"mmdetection's Faster R-CNN files (ResNet/ResNeXt, FPN/C4/DC5, RPNHead, 2-fc or "
            f"res5 box head), see {_CONFIGS}"
        )
    out = {}
    for key, value in state.items():
        key = _strip(key)
        if _DROPPED.search(key):
            continue
        new = next((rename(key[len(p) :]) for p, rename in _RULES if key.startswith(p)), None)
        if new is None:
            raise CheckpointError(
                f"{path}: mmdetection parameter '{key}' has no detkit counterpart; detkit loads "
                f"mmdetection's Faster R-CNN files (ResNet/ResNeXt backbone, FPN or none, "
                f"RPNHead, Shared2FCBBoxHead or the C4 res5 head), see {_CONFIGS}"
            )
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{path}: '{key}' holds a {type(value).__name__}, not a tensor")
        out[new] = value.float() if value.is_floating_point() else value
    return out


def class_names_of(meta: Any) -> Optional[List[str]]:
    """The class names in an mmdetection file's meta: ``dataset_meta.classes`` (3.x) or
    ``CLASSES`` (2.x); None when it has neither."""
    if not isinstance(meta, dict):
        return None
    dataset_meta = meta.get("dataset_meta")
    names = dataset_meta.get("classes") if isinstance(dataset_meta, dict) else None
    if names is None:
        names = meta.get("CLASSES")
    if isinstance(names, str):
        names = [names]
    return [str(n) for n in names] if names is not None else None


def to_detkit_checkpoint(obj: Dict[str, Any], path) -> Optional[Dict[str, Any]]:
    """A loaded mmdetection Faster R-CNN file as ``{"model": detkit state dict, "class_names":
    from the meta, "source": "mmdetection:<path>"}``; None when ``obj`` is no mmdetection file.
    Optimizer and training state are dropped: detkit does not resume mmdetection's training."""
    if not is_mmdet_state(obj):
        return None
    model = mmdet_to_detkit(obj["state_dict"], path)
    out: Dict[str, Any] = {"model": model, "source": f"mmdetection:{path}"}
    names = class_names_of(obj.get("meta"))
    cls = model.get("roi_heads.predictor.cls_score.bias")
    if names is not None and cls is not None and len(names) == int(cls.numel()) - 1:
        out["class_names"] = names
    elif names is None and cls is not None:  # a file without meta: COCO's 80, VOC's 20
        fallback = default_class_names(int(cls.numel()) - 1)
        if fallback is not None:
            out["class_names"] = fallback
    return out
