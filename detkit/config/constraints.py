"""The allowed values of every config key whose type alone does not say them, in one table.

``defaults.yaml`` fixes each key's type; this table adds what the type cannot: a key's choices
(``OneOf``), a range (``Int`` / ``Num`` with bounds) or a union with a word (``Auto``: ``auto`` or an
int). :func:`detkit.config.schema.check_value` applies it to every file, dict and override as it
is loaded, so a typo fails at ``load_config`` with the key, where it was set and the allowed values,
never later in a run. A constraint on a list key applies to each element (nested lists included).

What a constraint cannot know stays with the code that builds from several keys (e.g. that
``model.rpn.in_features`` names levels the neck makes, or that ``solver.steps`` increase).
"""

from __future__ import annotations

import difflib
import numbers
import re
from typing import Any, Dict, Optional, Tuple

from detkit.errors import ConfigError


def _error(key: str, label: str, allowed: str, value: Any, hint: str = "") -> ConfigError:
    return ConfigError(f"config key '{key}' ({label}): expected {allowed}, got {value!r}{hint}")


class OneOf:
    """One of a fixed set of values (the type is checked against the default before)."""

    def __init__(self, *values: Any):
        self.values = values

    def describe(self) -> str:
        return " | ".join('""' if v == "" else str(v) for v in self.values)

    def check(self, value: Any, key: str, label: str) -> Any:
        if value in self.values:
            return value
        close = difflib.get_close_matches(str(value), [str(v) for v in self.values], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise _error(key, label, self.describe(), value, hint)


class Num:
    """A number within bounds: ``low <= x <= high``, or ``<`` where the bound is open."""

    integer = False

    def __init__(
        self,
        low: Optional[float] = None,
        high: Optional[float] = None,
        *,
        low_open: bool = False,
        high_open: bool = False,
    ):
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open

    def describe(self) -> str:
        kind = "an int" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{kind} in {left}{self.low}, {self.high}{right}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {self.low}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {self.high}"
        return kind

    def allows(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if self.integer and not isinstance(value, numbers.Integral):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def check(self, value: Any, key: str, label: str) -> Any:
        if not self.allows(value):
            raise _error(key, label, self.describe(), value)
        return value if self.integer else float(value)


class Int(Num):
    """An int within bounds."""

    integer = True


class Auto:
    """The word ``auto`` or a value of ``inner``: this replaces the default's type (``auto`` is a
    string, the alternative an int), so ``auto`` and ``2`` load alike from a file or an override."""

    word = "auto"

    def __init__(self, inner: Num):
        self.inner = inner

    def describe(self) -> str:
        return f"{self.word} | {self.inner.describe()}"

    def check(self, value: Any, key: str, label: str) -> Any:
        if value == self.word:
            return value
        if not self.inner.allows(value):
            raise _error(key, label, self.describe(), value)
        return self.inner.check(value, key, label)


Constraint = Any  # OneOf | Num | Int | Auto

FRACTION = Num(0, 1)  # IoU thresholds, probabilities, fractions
NON_NEGATIVE, POSITIVE = Num(0), Num(0, low_open=True)
COUNT, SIZE = Int(0), Int(1)  # COUNT: 0 allowed (0 = off / none); SIZE: at least 1
NORMS = ("FrozenBN", "BN", "SyncBN", "GN")

CONSTRAINTS: Dict[str, Constraint] = {
    "model.num_classes": SIZE,
    "model.pixel_std": POSITIVE,
    "model.size_divisibility": COUNT,
    "model.input_format": OneOf("RGB", "BGR"),
    "model.pixel_divisor": POSITIVE,
    "model.resize_interpolation": OneOf("tensor_bilinear", "pil_bilinear", "cv2_bilinear"),
    "model.backbone.depth": OneOf(18, 34, 50, 101, 152),
    "model.backbone.norm": OneOf(*NORMS),
    "model.backbone.freeze_at": Int(0, 5),
    "model.backbone.out_features": OneOf("res2", "res3", "res4", "res5"),
    "model.backbone.gn_groups": SIZE,
    "model.backbone.num_groups": SIZE,
    "model.backbone.width_per_group": SIZE,
    "model.backbone.res5_dilation": OneOf(1, 2),
    "model.neck.out_channels": SIZE,
    "model.neck.top_block": OneOf("maxpool", "none"),
    "model.neck.norm": OneOf("", *NORMS),
    "model.rpn.num_convs": SIZE,
    "model.rpn.anchor_sizes": SIZE,
    "model.rpn.aspect_ratios": POSITIVE,
    "model.rpn.anchor_order": OneOf("ratio_major", "size_major"),
    "model.rpn.anchor_strides": SIZE,
    "model.rpn.anchor_offset": Num(0, 1, high_open=True),
    "model.rpn.fg_iou_thresh": FRACTION,
    "model.rpn.bg_iou_thresh": FRACTION,
    "model.rpn.batch_size_per_image": SIZE,
    "model.rpn.positive_fraction": FRACTION,
    "model.rpn.pre_nms_topk_train": SIZE,
    "model.rpn.pre_nms_topk_test": SIZE,
    "model.rpn.post_nms_topk_train": SIZE,
    "model.rpn.post_nms_topk_test": SIZE,
    "model.rpn.nms_thresh": FRACTION,
    "model.rpn.score_thresh": FRACTION,
    "model.rpn.min_size": NON_NEGATIVE,
    "model.rpn.nms_score": OneOf("prob", "logit"),
    "model.rpn.nms_offset_below": COUNT,
    "model.roi_heads.nms_offset_below": COUNT,
    "model.box_coder.delta_scaling": OneOf("divide", "multiply_reciprocal"),
    "model.box_coder.center": OneOf("corner", "midpoint"),
    "model.box_coder.size_clamp": OneOf("upper", "both"),
    "model.rpn.smooth_l1_beta": NON_NEGATIVE,
    "model.rpn.loss_weight": NON_NEGATIVE,
    "model.roi_heads.fg_iou_thresh": FRACTION,
    "model.roi_heads.bg_iou_thresh": FRACTION,
    "model.roi_heads.batch_size_per_image": SIZE,
    "model.roi_heads.positive_fraction": FRACTION,
    "model.roi_heads.bbox_reg_weights": POSITIVE,
    "model.roi_heads.smooth_l1_beta": NON_NEGATIVE,
    "model.roi_heads.loss_weight": NON_NEGATIVE,
    "model.roi_heads.score_thresh_test": FRACTION,
    "model.roi_heads.nms_thresh_test": FRACTION,
    "model.roi_heads.detections_per_image": SIZE,
    "model.roi_heads.min_size_test": NON_NEGATIVE,
    "model.roi_heads.refine_iterations": COUNT,
    "model.roi_heads.refine_nms_thresh": FRACTION,
    "model.roi_heads.refine_vote_thresh": FRACTION,
    "model.roi_heads.pooler.output_size": SIZE,
    "model.roi_heads.pooler.canonical_scale": SIZE,
    "model.roi_heads.pooler.canonical_level": COUNT,
    "model.roi_heads.pooler.level_eps": NON_NEGATIVE,
    "model.roi_heads.pooler.level_eps_in_log": NON_NEGATIVE,
    "model.roi_heads.box_head.fc_dim": SIZE,
    "model.roi_heads.box_head.conv_dims": SIZE,
    "model.roi_heads.box_head.fc_dims": SIZE,
    "model.roi_heads.box_head.norm": OneOf("", *NORMS),
    "input.min_size_train": SIZE,
    "input.max_size_train": SIZE,
    "input.min_size_test": SIZE,
    "input.max_size_test": SIZE,
    "input.resize_rounding": OneOf("floor", "round", "scaled_round"),
    "input.hflip_prob": FRACTION,
    "input.color_jitter": NON_NEGATIVE,
    "data.num_workers": COUNT,
    "solver.ims_per_batch": SIZE,
    "solver.reference_batch_size": SIZE,
    "solver.base_lr": POSITIVE,
    "solver.optimizer": OneOf("SGD", "AdamW"),
    "solver.momentum": FRACTION,
    "solver.weight_decay": NON_NEGATIVE,
    "solver.weight_decay_norm": NON_NEGATIVE,
    "solver.max_iter": SIZE,
    "solver.max_time_minutes": NON_NEGATIVE,
    "solver.lr_schedule": OneOf("multistep", "cosine"),
    "solver.steps": SIZE,
    "solver.gamma": POSITIVE,
    "solver.warmup_iters": COUNT,
    "solver.warmup_factor": FRACTION,
    "solver.clip_grad_norm": NON_NEGATIVE,
    "solver.accumulate": SIZE,
    "solver.amp_dtype": OneOf("bf16", "fp16"),
    "solver.checkpoint_period": SIZE,
    "solver.keep_checkpoints": COUNT,
    "solver.eval_period": COUNT,
    "solver.log_period": SIZE,
    "solver.stall_timeout_minutes": NON_NEGATIVE,
    "solver.stop_signals": OneOf("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT", "SIGHUP"),
    "test.scales": SIZE,
    "test.merge": OneOf("nms", "soft_nms", "vote"),
    "test.merge_nms_thresh": FRACTION,
    "test.merge_vote_thresh": FRACTION,
    "test.ims_per_batch": Auto(SIZE),
    "test.evaluator_engine": OneOf("fast", "pycocotools"),
    "test.precision": OneOf("auto", "fp32", "bf16", "fp16"),
    "test.memory_format": OneOf("auto", "contiguous", "channels_last"),
    "test.parallel_images": Auto(SIZE),
}

# Every other key that is not a bool takes any value of its type: paths (checked where they are
# read), class names (checked against components.yaml), dataset entries (against the dataset's
# constructor), feature names (against the levels the neck makes, by the builder), and these.
ANY_VALUE = (
    "model.pixel_mean",  # any mean can be subtracted
    "model.roi_heads.pooler.sampling_ratio",  # <= 0: adaptive (torchvision's RoIAlign)
    "solver.seed",
)

_INDEX = re.compile(r"\[\d+\]")


def constraint_for(key: str) -> Optional[Constraint]:
    """The constraint on a dotted key; list elements (``test.scales[1]``) share their list's."""
    return CONSTRAINTS.get(_INDEX.sub("", key))


def choices(key: str) -> Tuple[Any, ...]:
    """The values a ``OneOf`` key allows (a test keeps them equal to what the consuming code takes)."""
    constraint = CONSTRAINTS[key]
    if not isinstance(constraint, OneOf):
        raise KeyError(f"config key '{key}' has no choices")
    return constraint.values


# Pairs of keys whose values must keep an order: (lower key, upper key). A Matcher labels IoU >= fg as
# foreground and IoU < bg as background, so bg above fg would leave no consistent label.
ORDERED_PAIRS = (
    ("model.rpn.bg_iou_thresh", "model.rpn.fg_iou_thresh"),
    ("model.roi_heads.bg_iou_thresh", "model.roi_heads.fg_iou_thresh"),
)


def check_relations(lookup, origin) -> None:
    """Refuse a config whose ``ORDERED_PAIRS`` are out of order, naming both keys, their values and
    where each was set. ``lookup(key)`` gives a dotted key's value, ``origin(key)`` where it was set."""
    for low, high in ORDERED_PAIRS:
        if lookup(low) > lookup(high):
            raise ConfigError(
                f"config key '{low}' ({origin(low)}) = {lookup(low)} must not exceed "
                f"'{high}' ({origin(high)}) = {lookup(high)}"
            )
