"""Loading weights from local files: torchvision ImageNet ResNets and torchvision Faster R-CNNs.

Nothing is ever downloaded; every path is a file the user names. Files are read by
``detkit.utils.io.load_state_file`` (the package's one loader); this module only renames tensors.
"""

from __future__ import annotations

import logging
import re
from typing import Dict

import torch
from torch import Tensor, nn

from detkit.utils.io import CheckpointMismatch, load_state_file

logger = logging.getLogger("detkit")


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


def load_backbone_weights(model: nn.Module, path: str) -> None:
    """Load a torchvision ImageNet ResNet checkpoint (e.g. resnet101-*.pth) into the backbone."""
    c4 = model.neck is None
    state = imagenet_to_detkit(load_state_file(path), c4)
    own = model.state_dict()
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise CheckpointMismatch(
            f"{path}: shapes differ for {bad[:3]} (is model.backbone.depth right?)"
        )
    result = model.load_state_dict(state, strict=False)
    expected_missing = [
        k for k in result.missing_keys if k.startswith("backbone.") or ".res5." in k
    ]
    if result.unexpected_keys:
        logger.warning(
            "%s: %d keys not used, e.g. %s",
            path,
            len(result.unexpected_keys),
            result.unexpected_keys[:3],
        )
    if expected_missing:
        logger.warning(
            "%s: %d backbone keys missing, e.g. %s",
            path,
            len(expected_missing),
            expected_missing[:3],
        )
    logger.info("loaded ImageNet backbone weights from %s (%d tensors)", path, len(state))


_TV_RULES = [
    (r"^backbone\.body\.", "backbone."),
    (r"^backbone\.fpn\.inner_blocks\.(\d+)\.(?:0\.)?", r"neck.lateral_convs.\1."),
    (r"^backbone\.fpn\.layer_blocks\.(\d+)\.(?:0\.)?", r"neck.output_convs.\1."),
    (r"^rpn\.head\.conv\.(?:0\.0\.)?", "rpn.head.conv."),
    (r"^rpn\.head\.cls_logits\.", "rpn.head.objectness."),
    (r"^rpn\.head\.bbox_pred\.", "rpn.head.deltas."),
    (r"^roi_heads\.box_head\.", "roi_heads.box_head."),
    (r"^roi_heads\.box_predictor\.", "roi_heads.predictor."),
]


def torchvision_detector_to_detkit(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Convert a torchvision ``fasterrcnn_resnet50_fpn`` state dict.

    torchvision's class 0 is background and class i is detkit label i - 1; detkit keeps the
    background logit last and has no box regressor for it, so the predictor rows are reordered.
    """
    out = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        for pattern, repl in _TV_RULES:
            new, n = re.subn(pattern, repl, k)
            if n:
                out[new] = v
                break
        else:
            raise ValueError(f"unexpected key in torchvision checkpoint: {k}")
    w, b = out["roi_heads.predictor.cls_score.weight"], out["roi_heads.predictor.cls_score.bias"]
    out["roi_heads.predictor.cls_score.weight"] = torch.cat([w[1:], w[:1]])
    out["roi_heads.predictor.cls_score.bias"] = torch.cat([b[1:], b[:1]])
    out["roi_heads.predictor.bbox_pred.weight"] = out["roi_heads.predictor.bbox_pred.weight"][4:]
    out["roi_heads.predictor.bbox_pred.bias"] = out["roi_heads.predictor.bbox_pred.bias"][4:]
    return out


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
