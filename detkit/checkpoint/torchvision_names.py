"""torchvision's names in detkit: ImageNet ResNets and Faster R-CNNs (v1 and v2).

Files are read by ``detkit.checkpoint.reader`` (the package's one loader); this module only renames
tensors and checks that the renamed ones fit a model.
"""

from __future__ import annotations

import re
from typing import Dict

import torch
from torch import Tensor, nn

from detkit.errors import CheckpointError


def imagenet_to_detkit(state: Dict[str, Tensor], c4: bool) -> Dict[str, Tensor]:
    """torchvision ResNet names -> detkit model names (res5 goes to the C4 head)."""
    out = {}
    for k, v in state.items():
        if k.startswith("fc."):
            continue
        if c4 and k.startswith("layer4."):
            out["roi_heads.box_head.res5." + k[len("layer4.") :]] = v
        else:
            out["backbone." + k] = v
    return out


# torchvision name -> detkit name, first match wins. Both torchvision layouts convert: v1
# (fasterrcnn_resnet50_fpn: FrozenBN, plain FPN, one RPN conv, TwoMLPHead) and v2
# (fasterrcnn_resnet50_fpn_v2: BatchNorm everywhere, FPN convs + BN, two RPN convs, ConvFCHead).
# Since torchvision 0.13 a conv(+norm) block is a Sequential, `<block>.0` the conv and `<block>.1`
# the norm; files saved before that have the conv weights directly under `<block>.`.
_TV_RULES = [
    (r"^backbone\.body\.", "backbone."),
    (r"^backbone\.fpn\.inner_blocks\.(\d+)\.1\.", r"neck.lateral_norms.\1."),
    (r"^backbone\.fpn\.inner_blocks\.(\d+)\.(?:0\.)?", r"neck.lateral_convs.\1."),
    (r"^backbone\.fpn\.layer_blocks\.(\d+)\.1\.", r"neck.output_norms.\1."),
    (r"^backbone\.fpn\.layer_blocks\.(\d+)\.(?:0\.)?", r"neck.output_convs.\1."),
    (r"^rpn\.head\.cls_logits\.", "rpn.head.objectness."),
    (r"^rpn\.head\.bbox_pred\.", "rpn.head.deltas."),
    (r"^roi_heads\.box_head\.(fc6|fc7)\.", r"roi_heads.box_head.\1."),  # v1 TwoMLPHead
    (r"^roi_heads\.box_head\.(\d+)\.0\.", r"roi_heads.box_head.convs.\1."),  # v2 conv blocks
    (r"^roi_heads\.box_head\.(\d+)\.1\.", r"roi_heads.box_head.norms.\1."),
    (r"^roi_heads\.box_predictor\.", "roi_heads.predictor."),
]
_TV_RPN_CONV = re.compile(r"^rpn\.head\.conv\.(?:(\d+)\.0\.)?(weight|bias)$")
_TV_BOX_FC = re.compile(r"^roi_heads\.box_head\.(\d+)\.(weight|bias)$")

# The detkit config that builds each torchvision layout (paths relative to the repository).
TORCHVISION_CONFIGS = {
    "v1": "configs/torchvision/fasterrcnn_resnet50_fpn.yaml",
    "v2": "configs/torchvision/fasterrcnn_resnet50_fpn_v2.yaml",
}


def torchvision_variant(state: Dict[str, Tensor]) -> str:
    """ "v2" for a fasterrcnn_resnet50_fpn_v2 state dict (its RPN head has a second conv), else "v1"."""
    return "v2" if "rpn.head.conv.1.0.weight" in state else "v1"


def torchvision_detector_to_detkit(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Convert a torchvision ``fasterrcnn_resnet50_fpn`` (v1) or ``_v2`` state dict.

    torchvision's class 0 is background and class i is detkit label i - 1; detkit keeps the
    background logit last and has no box regressor for it, so the predictor rows are reordered.
    ``num_batches_tracked`` is kept: v2's BatchNorm2d layers have it (detkit's FrozenBN, which
    frozen stages use, drops it when loading).
    """
    rpn_convs = sorted({m.group(1) for m in map(_TV_RPN_CONV.match, state) if m and m.group(1)})
    # v2's box head is Sequential(conv blocks..., Flatten, Linear, ReLU): its Linear layers are
    # the indices with weights directly under them, in order.
    fc_index = {
        idx: j
        for j, idx in enumerate(
            sorted({int(m.group(1)) for m in map(_TV_BOX_FC.match, state) if m})
        )
    }
    out = {}
    for k, v in state.items():
        out[_detkit_name(k, len(rpn_convs), fc_index)] = v
    w, b = out["roi_heads.predictor.cls_score.weight"], out["roi_heads.predictor.cls_score.bias"]
    out["roi_heads.predictor.cls_score.weight"] = torch.cat([w[1:], w[:1]])
    out["roi_heads.predictor.cls_score.bias"] = torch.cat([b[1:], b[:1]])
    out["roi_heads.predictor.bbox_pred.weight"] = out["roi_heads.predictor.bbox_pred.weight"][4:]
    out["roi_heads.predictor.bbox_pred.bias"] = out["roi_heads.predictor.bbox_pred.bias"][4:]
    return out


def _detkit_name(key: str, num_rpn_convs: int, fc_index: Dict[int, int]) -> str:
    m = _TV_RPN_CONV.match(key)
    if m:
        # one conv keeps detkit's name `conv` (RPNHead's single-conv layout), v2's two: `convs.k`
        if num_rpn_convs > 1:
            return f"rpn.head.convs.{m.group(1)}.{m.group(2)}"
        return f"rpn.head.conv.{m.group(2)}"
    m = _TV_BOX_FC.match(key)
    if m:
        return f"roi_heads.box_head.fcs.{fc_index[int(m.group(1))]}.{m.group(2)}"
    for pattern, repl in _TV_RULES:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    raise CheckpointError(
        f"unexpected key in torchvision checkpoint: {key} (expected a fasterrcnn_resnet50_fpn or "
        "fasterrcnn_resnet50_fpn_v2 state dict)"
    )


def fit_torchvision_state(
    model: nn.Module, converted: Dict[str, Tensor], *, variant: str, path: str, config: str
) -> Dict[str, Tensor]:
    """The converted tensors ``model`` takes; an error naming the config for the file's layout
    (``variant``: v1 / v2) when they do not fit the model built from ``config``."""
    own = model.state_dict()
    # frozen stages hold FrozenBN, which has no counter: the file's BatchNorm counters go unused
    converted = {
        k: v for k, v in converted.items() if k in own or not k.endswith("num_batches_tracked")
    }
    # BN counters last: the tensors that name the layout difference are the useful examples
    missing = sorted((k for k in own if k not in converted), key=lambda k: "num_batches" in k)
    unexpected = [k for k in converted if k not in own]
    misshapen = [k for k in own if k in converted and converted[k].shape != own[k].shape]
    problems = [
        f"{len(keys)} {what} (e.g. {keys[:3]})"
        for what, keys in (
            ("model tensors missing", missing),
            ("file tensors unexpected", unexpected),
            ("of another shape", misshapen),
        )
        if keys
    ]
    if problems:
        raise CheckpointError(
            f"{path} (torchvision {variant} layout) does not fit {config}: "
            f"{', '.join(problems)}; the config for this layout is {TORCHVISION_CONFIGS[variant]}"
        )
    return converted


def torchvision_num_classes(state: Dict[str, Tensor]) -> int:
    """Foreground classes of a torchvision detector checkpoint (its cls_score has K + 1 rows)."""
    return int(state["roi_heads.box_predictor.cls_score.bias"].numel()) - 1


# torchvision's COCO detectors have 91 outputs: background + the 90 original COCO ids, 11 unused.
# detkit label i = torchvision label i + 1 - 1 -> COCO category id i + 1.
COCO_TORCHVISION_NAMES = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "N/A",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "N/A",
    "backpack",
    "umbrella",
    "N/A",
    "N/A",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "N/A",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "N/A",
    "dining table",
    "N/A",
    "N/A",
    "toilet",
    "N/A",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "N/A",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
]
