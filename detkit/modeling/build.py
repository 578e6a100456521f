"""The only code that turns a config into modules. Modules themselves never see the config."""

from __future__ import annotations

import logging
from typing import List, Optional

from ..registry import BACKBONES, NECKS, ROI_BOX_HEADS, ROI_POOLERS
from ..structures import BoxCoder
from .anchor_generator import AnchorGenerator
from .detector import FasterRCNN
from .matcher import Matcher
from .roi_heads import ROIHeads
from .rpn import RPN, RPNHead

logger = logging.getLogger("detkit")


def _c4(cfg) -> bool:
    return str(cfg.model.neck.name).lower() == "none"


def build_backbone(cfg):
    b = cfg.model.backbone
    backbone = BACKBONES.get(b.name)(
        depth=b.depth,
        norm=b.norm,
        freeze_at=b.freeze_at,
        out_features=b.out_features,
        with_res5=not _c4(cfg),
        gn_groups=b.gn_groups,
    )
    if _c4(cfg):
        return backbone, None
    n = cfg.model.neck
    neck = NECKS.get(n.name)(
        in_channels=dict(backbone.out_channels),
        in_strides=backbone.strides,
        out_channels=n.out_channels,
        top_block=n.top_block,
    )
    return backbone, neck


def _check_features(wanted, available, key):
    missing = [f for f in wanted if f not in available]
    if missing:
        raise ValueError(
            f"config key '{key}': features {missing} are not produced; available: {sorted(available)}"
        )


def build_rpn(cfg, channels: dict) -> RPN:
    r = cfg.model.rpn
    _check_features(r.in_features, channels, "model.rpn.in_features")
    anchors = AnchorGenerator(r.anchor_sizes, r.aspect_ratios)
    if len(r.anchor_sizes) != len(r.in_features):
        raise ValueError(
            f"model.rpn.anchor_sizes has {len(r.anchor_sizes)} levels but model.rpn.in_features has "
            f"{len(r.in_features)}"
        )
    head = RPNHead(in_channels=channels[r.in_features[0]], num_anchors=anchors.num_anchors_per_cell)
    return RPN(
        in_features=r.in_features,
        head=head,
        anchor_generator=anchors,
        matcher=Matcher(r.fg_iou_thresh, r.bg_iou_thresh, allow_low_quality_matches=True),
        box_coder=BoxCoder((1.0, 1.0, 1.0, 1.0)),
        batch_size_per_image=r.batch_size_per_image,
        positive_fraction=r.positive_fraction,
        pre_nms_topk=(r.pre_nms_topk_train, r.pre_nms_topk_test),
        post_nms_topk=(r.post_nms_topk_train, r.post_nms_topk_test),
        nms_thresh=r.nms_thresh,
        score_thresh=r.score_thresh,
        min_size=r.min_size,
        smooth_l1_beta=r.smooth_l1_beta,
        loss_weight=r.loss_weight,
    )


def build_roi_heads(cfg, channels: dict) -> ROIHeads:
    h = cfg.model.roi_heads
    _check_features(h.in_features, channels, "model.roi_heads.in_features")
    p = h.pooler
    pooler = ROI_POOLERS.get(p.name)(
        output_size=p.output_size,
        sampling_ratio=p.sampling_ratio,
        aligned=p.aligned,
        canonical_scale=p.canonical_scale,
        canonical_level=p.canonical_level,
    )
    in_ch = channels[h.in_features[0]]
    head_cls = ROI_BOX_HEADS.get(h.box_head.name)
    if h.box_head.name == "Res5Head":
        b = cfg.model.backbone
        box_head = head_cls(
            in_channels=in_ch,
            depth=b.depth,
            norm=b.norm,
            gn_groups=b.gn_groups,
            pooler_size=p.output_size,
        )
    else:
        box_head = head_cls(in_channels=in_ch, pooler_size=p.output_size, fc_dim=h.box_head.fc_dim)
    return ROIHeads(
        in_features=h.in_features,
        pooler=pooler,
        box_head=box_head,
        num_classes=cfg.model.num_classes,
        matcher=Matcher(h.fg_iou_thresh, h.bg_iou_thresh),
        box_coder=BoxCoder(h.bbox_reg_weights),
        batch_size_per_image=h.batch_size_per_image,
        positive_fraction=h.positive_fraction,
        add_gt_as_proposals=h.add_gt_as_proposals,
        smooth_l1_beta=h.smooth_l1_beta,
        loss_weight=h.loss_weight,
        score_thresh=h.score_thresh_test,
        nms_thresh=h.nms_thresh_test,
        detections_per_image=h.detections_per_image,
        min_size_test=h.min_size_test,
        context=h.context.enabled,
        refine=dict(h.refine.to_dict() if hasattr(h.refine, "to_dict") else h.refine),
    )


def build_model(cfg, class_names: Optional[List[str]] = None) -> FasterRCNN:
    """Build a Faster R-CNN (C4 when ``model.neck.name`` is none, else FPN) from a validated config."""
    if class_names is not None and len(class_names) != cfg.model.num_classes:
        raise ValueError(
            f"model.num_classes is {cfg.model.num_classes} but the dataset has {len(class_names)} "
            f"classes ({class_names[:5]}...); set model.num_classes={len(class_names)}"
        )
    backbone, neck = build_backbone(cfg)
    channels = dict(neck.out_channels if neck is not None else backbone.out_channels)
    model = FasterRCNN(
        backbone=backbone,
        neck=neck,
        rpn=build_rpn(cfg, channels),
        roi_heads=build_roi_heads(cfg, channels),
        pixel_mean=cfg.model.pixel_mean,
        pixel_std=cfg.model.pixel_std,
        size_divisibility=cfg.model.size_divisibility,
        class_names=class_names,
    )
    if cfg.model.backbone.weights:
        from .weights import load_backbone_weights

        load_backbone_weights(model, cfg.model.backbone.weights)
    return model
