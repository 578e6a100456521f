"""Foreign weights written as detkit files (tools/convert_weights.py): a detectron2 or
mmdetection detector as a detkit checkpoint, MSRA's Caffe2 ImageNet ResNets as a
``model.backbone.weights`` file.

All are read by :func:`detkit.checkpoint.load_checkpoint`, which renames them in memory
(``detectron2_names``, ``mmdet_names``); this module checks them against a config before they are
written.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import Tensor

from detkit.config import load_config
from detkit.errors import CheckpointError, ConfigError
from detkit.modeling.build import build_model

from .reader import load_checkpoint, load_model_weights
from .torchvision_names import imagenet_to_detkit

# MSRA's ImageNet ResNets are Caffe models: BGR input, mean subtracted, no std division, stride
# on the first 1x1 of each bottleneck. Trained with other preprocessing they start from nonsense.
_MSRA_CONFIG = {
    "model.backbone.stride_in_1x1": True,
    "model.backbone.num_groups": 1,
    "model.input_format": "BGR",
    "model.pixel_mean": [103.53, 116.28, 123.675],
    "model.pixel_std": [1.0, 1.0, 1.0],
}


def _num_classes_of(model_state: Dict[str, Tensor], path) -> int:
    cls = model_state.get("roi_heads.predictor.cls_score.bias")
    if cls is None:
        raise CheckpointError(f"{path}: no box predictor (roi_heads.box_predictor.cls_score)")
    return int(cls.numel()) - 1


def detectron2_checkpoint(
    src, config, overrides=(), class_names: Optional[List[str]] = None
) -> Dict[str, Any]:
    """A detkit checkpoint (model, config, class names) from a detectron2 zoo ``.pkl`` or training
    ``.pth``; the class count comes from the file, the names from ``class_names`` or the zoo's
    (COCO's 80, VOC's 20). The tensors must fit ``config`` exactly (else the error names them and
    the config the file fits)."""
    return _foreign_checkpoint(
        src,
        config,
        overrides,
        class_names,
        source="detectron2",
        what="a detectron2 detector (no proposal_generator.* parameters); --from "
        "detectron2-imagenet converts ImageNet backbones, --from torchvision torchvision detectors",
    )


def mmdet_checkpoint(
    src, config, overrides=(), class_names: Optional[List[str]] = None
) -> Dict[str, Any]:
    """A detkit checkpoint from an mmdetection Faster R-CNN ``.pth`` (the zoo's or a training
    output; renamed as it is read, ``mmdet_names``): the class count from the file, the names
    from ``class_names``, the file's meta or COCO's/VOC's. The tensors must fit ``config`` (a
    configs/mmdetection/ file) exactly, else the error names them and the config the file fits."""
    return _foreign_checkpoint(
        src,
        config,
        overrides,
        class_names,
        source="mmdetection",
        what="an mmdetection detector ({'state_dict': ..., 'meta': ...} with backbone.* and "
        "rpn_head.* / roi_head.* tensors); mmdet's ImageNet backbones need no conversion "
        "(model.backbone.weights reads them)",
    )


def _foreign_checkpoint(src, config, overrides, class_names, source: str, what: str):
    ckpt = load_checkpoint(src)
    if not str(ckpt.get("source", "")).startswith(source + ":"):
        raise CheckpointError(f"{src} is not {what}")
    num_classes = _num_classes_of(ckpt["model"], src)
    cfg = load_config(config, [*overrides, f"model.num_classes={num_classes}"])
    names = class_names or ckpt.get("class_names")
    if class_names is not None and len(class_names) != num_classes:
        raise CheckpointError(
            f"{src} has {num_classes} classes but {len(class_names)} class names were given"
        )
    if names is None:
        raise CheckpointError(
            f"{src} has {num_classes} classes, neither COCO's 80 nor VOC's 20: give their names "
            "with --class-names (a text file, one name per line)"
        )
    model = build_model(cfg, class_names=list(names))
    load_model_weights(model, src, strict=True, checkpoint=ckpt)
    return {
        "model": model.state_dict(),
        "config": cfg.to_dict(),
        "class_names": list(model.class_names),
        "source": ckpt["source"],
    }


def _config_value(tree: Dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return "<no such key>"
        tree = tree[part]
    return tree


def caffe2_backbone_file(src, config, overrides=()) -> Dict[str, Any]:
    """A backbone initialisation (torchvision ResNet names, what ``model.backbone.weights`` takes)
    from MSRA's Caffe2 ``R-50.pkl`` / ``R-101.pkl``, after checking that ``config`` preprocesses
    and strides as those networks were trained and that every tensor fits its backbone."""
    ckpt = load_checkpoint(src)
    if not str(ckpt.get("source", "")).startswith("caffe2-imagenet:"):
        raise CheckpointError(
            f"{src} holds no Caffe2 ImageNet ResNet blobs (conv1_w, res2_0_branch2a_w, ...)"
        )
    cfg = load_config(config, [*overrides, "model.backbone.weights="])
    values = cfg.to_dict()
    for key, want in _MSRA_CONFIG.items():
        got = _config_value(values, key)
        lists = isinstance(got, list) and isinstance(want, list) and len(got) == len(want)
        close = lists and np.allclose(got, want)
        if got != want and not close:
            raise ConfigError(
                f"config key '{key}' is {got!r} in {config}, but MSRA's ImageNet ResNets need "
                f"{want!r} (Caffe models: BGR, mean subtraction only, stride in the first 1x1); "
                "use a configs/detectron2/ config"
            )
    with torch.device("meta"):
        model = build_model(cfg)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    detkit_names = imagenet_to_detkit(ckpt["model"], c4=model.neck is None)
    bad = [k for k, v in detkit_names.items() if own.get(k) != tuple(v.shape)]
    if bad:
        raise CheckpointError(
            f"{src} does not fit the backbone of {config}: {bad[:4]} (file shapes "
            f"{[tuple(detkit_names[k].shape) for k in bad[:4]]}); is model.backbone.depth right?"
        )
    return {"model": ckpt["model"], "source": ckpt["source"]}
