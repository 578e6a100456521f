"""The only code that turns a config into modules. Modules themselves never see the config.

Config keys are the constructor arguments they feed. A component section (``name:`` plus the keys
of that class, see ``detkit/config/components.yaml``) is passed on as it is; the builder adds only
what it derives from other sections (input channels and strides, the pooler's output size, and the
backbone keys a box head asks for in ``backbone_args``).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional

from torch import nn

from detkit.errors import ConfigError

from ..registry import ROI_BOX_HEADS, ROI_POOLERS
from ..structures import BoxCoder
from .anchor_generator import AnchorGenerator
from .backbones import FPN, ResNet
from .detector import FasterRCNN
from .matcher import Matcher
from .roi_heads import ROIHeads
from .rpn import RPN, RPNHead

logger = logging.getLogger("detkit")


def component_kwargs(section, *, exclude=()) -> Dict[str, Any]:
    """A component section's keys as constructor keyword arguments (all but ``name``)."""
    return {k: v for k, v in section.to_dict().items() if k != "name" and k not in exclude}


def _config_error(cfg, key: str, problem: str) -> ConfigError:
    return ConfigError(f"config key '{key}' ({cfg.origin(key)}): {problem}")


def build_backbone(cfg) -> ResNet:
    # `weights` is not a ResNet argument: detkit.checkpoint.init_from_config loads the file into
    # the finished model (`allow_random_init` is check_backbone_init's)
    return ResNet(**component_kwargs(cfg.model.backbone, exclude=("weights", "allow_random_init")))


def check_backbone_init(cfg) -> None:
    """Refuse to *train* a FrozenBN backbone from random weights (inference loads weights later).

    Frozen BN keeps the statistics of the weights it starts from; from random weights it is an
    identity, so the backbone trains unnormalised: the loss of a deep ResNet explodes within a few
    iterations and diverges, with nothing that says why.
    """
    b, m = cfg.model.backbone, cfg.model
    if b.norm != "FrozenBN" or b.weights or m.weights or b.allow_random_init:
        return
    raise _config_error(
        cfg,
        "model.backbone.norm",
        "FrozenBN needs pretrained weights and model.backbone.weights and model.weights are "
        "empty (from random weights frozen BN normalises nothing and the loss explodes). Pass "
        "ImageNet weights as model.backbone.weights=FILE (local files only): torchvision's "
        f"resnet{b.depth}-*.pth state dict, or MSRA's R-50.pkl/R-101.pkl converted with "
        "tools/convert_weights.py --from detectron2-imagenet; or a detector checkpoint as "
        "model.weights=FILE. To train from scratch on purpose: model.backbone.norm=GN (or BN) "
        "model.backbone.freeze_at=0, or model.backbone.allow_random_init=true",
    )


def build_neck(cfg, backbone: ResNet) -> Optional[FPN]:
    """The FPN, or None for ``name: none`` (the C4 design: the heads read the backbone's features)."""
    n = cfg.model.neck
    if n.name == "none":
        return None
    return FPN(
        in_channels=dict(backbone.out_channels), in_strides=backbone.strides, **component_kwargs(n)
    )


def _check_features(cfg, key: str, wanted, available) -> None:
    missing = [f for f in wanted if f not in available]
    if missing:
        raise _config_error(
            cfg, key, f"features {missing} are not produced; available: {sorted(available)}"
        )


def build_rpn(cfg, channels: dict) -> RPN:
    """The RPN on model.rpn.in_features; the anchor keys are the AnchorGenerator's arguments with an
    ``anchor_`` prefix (anchor_sizes -> sizes, anchor_strides -> strides, ...)."""
    r = cfg.model.rpn
    _check_features(cfg, "model.rpn.in_features", r.in_features, channels)
    if len(r.anchor_sizes) != len(r.in_features):
        raise _config_error(
            cfg,
            "model.rpn.anchor_sizes",
            f"{len(r.anchor_sizes)} levels, but model.rpn.in_features has {len(r.in_features)}",
        )
    if r.anchor_strides and (
        len(r.anchor_strides) != len(r.in_features)
        or not all(isinstance(s, int) and s > 0 for s in r.anchor_strides)
    ):
        raise _config_error(
            cfg,
            "model.rpn.anchor_strides",
            f"{list(r.anchor_strides)} must be [] or one positive int per level of "
            f"model.rpn.in_features {list(r.in_features)}",
        )
    try:
        anchors = AnchorGenerator(
            r.anchor_sizes,
            r.aspect_ratios,
            rounded=r.anchor_rounded,
            order=r.anchor_order,
            strides=r.anchor_strides,
            offset=r.anchor_offset,
        )
    except ValueError as e:
        raise _config_error(cfg, "model.rpn.anchor_order", str(e)) from None
    head = RPNHead(
        in_channels=channels[r.in_features[0]],
        num_anchors=anchors.num_anchors_per_cell,
        num_convs=r.num_convs,
    )
    return RPN(
        in_features=r.in_features,
        head=head,
        anchor_generator=anchors,
        matcher=Matcher(r.fg_iou_thresh, r.bg_iou_thresh, allow_low_quality_matches=True),
        box_coder=BoxCoder((1.0, 1.0, 1.0, 1.0), **cfg.model.box_coder.to_dict()),
        batch_size_per_image=r.batch_size_per_image,
        positive_fraction=r.positive_fraction,
        pre_nms_topk_train=r.pre_nms_topk_train,
        pre_nms_topk_test=r.pre_nms_topk_test,
        post_nms_topk_train=r.post_nms_topk_train,
        post_nms_topk_test=r.post_nms_topk_test,
        nms_thresh=r.nms_thresh,
        score_thresh=r.score_thresh,
        min_size=r.min_size,
        min_size_strict=r.min_size_strict,
        nms_score=r.nms_score,
        nms_offset_below=r.nms_offset_below,
        smooth_l1_beta=r.smooth_l1_beta,
        loss_weight=r.loss_weight,
    )


def build_box_head(cfg, in_channels: int) -> nn.Module:
    """The registered box head ``model.roi_heads.box_head.name``, with the backbone keys it asks
    for in ``backbone_args`` (Res5Head is the backbone's res5 stage, so it takes depth and norm)."""
    h = cfg.model.roi_heads
    cls = ROI_BOX_HEADS.get(h.box_head.name)
    from_backbone = {k: cfg.model.backbone[k] for k in cls.backbone_args}
    return cls(
        in_channels=in_channels,
        pooler_size=h.pooler.output_size,
        **from_backbone,
        **component_kwargs(h.box_head),
    )


def build_roi_heads(cfg, channels: dict, strides: Optional[dict] = None) -> ROIHeads:
    """The RoI heads on model.roi_heads.in_features. The pooler gets each level's stride from the
    backbone/neck (its spatial scale is 1 / stride): inferring it from the padded image size is
    wrong for small unpadded images (size_divisibility 0)."""
    h = cfg.model.roi_heads
    _check_features(cfg, "model.roi_heads.in_features", h.in_features, channels)
    in_strides = [strides[f] for f in h.in_features] if strides else []
    return ROIHeads(
        in_features=h.in_features,
        pooler=ROI_POOLERS.get(h.pooler.name)(in_strides=in_strides, **component_kwargs(h.pooler)),
        box_head=build_box_head(cfg, channels[h.in_features[0]]),
        num_classes=cfg.model.num_classes,
        matcher=Matcher(h.fg_iou_thresh, h.bg_iou_thresh),
        box_coder=BoxCoder(h.bbox_reg_weights, **cfg.model.box_coder.to_dict()),
        batch_size_per_image=h.batch_size_per_image,
        positive_fraction=h.positive_fraction,
        add_gt_as_proposals=h.add_gt_as_proposals,
        smooth_l1_beta=h.smooth_l1_beta,
        loss_weight=h.loss_weight,
        score_thresh_test=h.score_thresh_test,
        nms_thresh_test=h.nms_thresh_test,
        detections_per_image=h.detections_per_image,
        min_size_test=h.min_size_test,
        nms_offset_below=h.nms_offset_below,
        context=h.context,
        refine_iterations=h.refine_iterations,
        refine_nms_thresh=h.refine_nms_thresh,
        refine_vote_thresh=h.refine_vote_thresh,
    )


def _check_last_stage_used(cfg, backbone: ResNet) -> None:
    """Without a neck, the last stage the backbone builds must feed a head; otherwise it would be
    an unused stage (e.g. res5 next to the Res5Head of the C4 design, which is res5 itself)."""
    last = backbone.out_features[-1]
    if last not in cfg.model.rpn.in_features and last not in cfg.model.roi_heads.in_features:
        raise _config_error(
            cfg,
            "model.backbone.out_features",
            f"the backbone builds up to {last}, which neither model.rpn.in_features nor "
            f"model.roi_heads.in_features reads (model.neck.name is none); drop it",
        )


def build_model(cfg, class_names: Optional[List[str]] = None) -> FasterRCNN:
    """Build a Faster R-CNN (C4 when ``model.neck.name`` is none, else FPN) from a validated config.

    Modules only, with their initial weights: no file is read (``model.backbone.weights`` is loaded
    by ``detkit.checkpoint.init_from_config``, a detector's weights by ``load_model_weights``)."""
    if class_names is not None and len(class_names) != cfg.model.num_classes:
        raise _config_error(
            cfg,
            "model.num_classes",
            f"{cfg.model.num_classes}, but the dataset has {len(class_names)} classes "
            f"({class_names[:5]}...); set model.num_classes={len(class_names)}",
        )
    backbone = build_backbone(cfg)
    neck = build_neck(cfg, backbone)
    if neck is None:
        _check_last_stage_used(cfg, backbone)
    channels = dict(neck.out_channels if neck is not None else backbone.out_channels)
    strides = dict(neck.strides if neck is not None else backbone.strides)
    return FasterRCNN(
        backbone=backbone,
        neck=neck,
        rpn=build_rpn(cfg, channels),
        roi_heads=build_roi_heads(cfg, channels, strides),
        pixel_mean=cfg.model.pixel_mean,
        pixel_std=cfg.model.pixel_std,
        size_divisibility=cfg.model.size_divisibility,
        class_names=class_names,
        input_format=cfg.model.input_format,
        pixel_divisor=cfg.model.pixel_divisor,
        resize_interpolation=cfg.model.resize_interpolation,
        rescale_clip=cfg.model.rescale_clip,
        rescale_drop_empty=cfg.model.rescale_drop_empty,
    )
