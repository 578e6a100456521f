"""The predictor the config asks for: the model wrapped in multi-scale/flip testing and autocast,
and the inference-only optimisations (BN folding, memory format)."""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from detkit.modeling.backbones.norm import fuse_frozen_bn
from detkit.modeling.precision import AutocastPredictor, resolve_precision, warn_if_slow_bf16
from detkit.modeling.tta import MultiScaleFlip

logger = logging.getLogger(__name__)


def build_predictor(model: nn.Module, cfg) -> nn.Module:
    """The one inference path (evaluation during training, tools/test.py, tools/video.py,
    Detector.predict, the benchmark): the model itself, or the model wrapped in multi-scale/flip
    testing when test.scales/flip ask for it, run under autocast when test.precision resolves to
    bf16/fp16 on the model's device."""
    t = cfg.test
    predictor = model
    if t.scales or t.flip:
        predictor = MultiScaleFlip(
            model,
            scales=list(t.scales) or [cfg.input.min_size_test],
            max_size=cfg.input.max_size_test,
            flip=t.flip,
            merge=t.merge,
            nms_thresh=t.merge_nms_thresh,
            vote_thresh=t.merge_vote_thresh,
            detections_per_image=cfg.model.roi_heads.detections_per_image,
            rounding=cfg.input.resize_rounding,
        )
    device = next(model.parameters()).device
    precision = resolve_precision(cfg, device)
    warn_if_slow_bf16(precision, device)
    return predictor if precision == "fp32" else AutocastPredictor(predictor, precision)


def optimize_for_inference(model: nn.Module, cfg) -> nn.Module:
    """A faster inference-only copy of ``model``, computing the same up to float rounding; the
    backends (``make_predictor``) call it on the model they build an eager predictor from.

    - ``test.fuse_bn``: fold frozen BN (and BN in eval mode) into the convolution before it
      (``fuse_frozen_bn``): one elementwise pass less per norm.
    - ``test.memory_format``: ``channels_last`` (NHWC) convolutions, ``contiguous`` (NCHW), or
      ``auto``: channels_last on the CPU (faster there for the models measured, folded or not, and
      what makes bf16 fast; docs/benchmarks.md), contiguous elsewhere.

    bf16 stays test.precision's business (``build_predictor``): it changes results beyond float
    rounding, so it is never switched on here.

    ``model`` itself is left as it is (its state_dict still loads into a fresh model and saves as
    it was loaded): the folding and the layout change happen in a deep copy, in eval mode, which is
    returned. With test.fuse_bn=false and test.memory_format=contiguous nothing changes and
    ``model`` is returned, put in eval mode.
    """
    t = cfg.test
    device = next(model.parameters()).device
    memory_format = t.memory_format
    if memory_format == "auto":
        memory_format = "channels_last" if device.type == "cpu" else "contiguous"
    if not t.fuse_bn and memory_format != "channels_last":
        return model.eval()
    # the copy is made in eval mode: BN folds with the running statistics eval mode uses
    optimized = copy.deepcopy(model).eval()
    if t.fuse_bn:
        logger.debug("folded %d norms into the convolutions before them", fuse_frozen_bn(optimized))
    if memory_format == "channels_last":
        optimized.to(memory_format=torch.channels_last)
    return optimized
