"""The one place where mixed precision is entered: training AMP (``solver.amp``), inference
(``test.precision``) and the benchmark all go through :func:`autocast`.

Box math stays in float32 inside the model under autocast: box decoding casts the deltas to
float32, the objectness and class scores come from float32 logits, the poolers keep RoI coordinates
and pooling in float32, NMS runs in float32, and the returned boxes and scores are float32.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Dict, List

import torch
from torch import Tensor, nn

from detkit.errors import ConfigError

logger = logging.getLogger("detkit")

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """``torch.autocast`` on ``device`` with bf16/fp16 activations; a no-op for fp32."""
    if precision not in PRECISIONS:
        raise ConfigError(
            f"autocast: precision must be one of {', '.join(PRECISIONS)}; got '{precision}'"
        )
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def training_precision(cfg, device: torch.device) -> str:
    """``solver.amp`` made concrete: solver.amp_dtype on CUDA, fp32 elsewhere (mixed-precision
    training needs CUDA; the trainer warns when solver.amp is ignored)."""
    return str(cfg.solver.amp_dtype) if cfg.solver.amp and device.type == "cuda" else "fp32"


def resolve_precision(cfg, device: torch.device) -> str:
    """``test.precision`` made concrete for ``device``: auto = the training precision on CUDA
    (solver.amp_dtype when solver.amp), fp32 elsewhere; fp16 needs CUDA. (The config's schema
    has already refused any other value.)"""
    value = str(cfg.test.precision)
    if value == "auto":
        return training_precision(cfg, device)
    if value == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"config key 'test.precision' ({cfg.origin('test.precision')}): fp16 needs a CUDA "
            f"device (this run is on {device.type}); use bf16 or fp32 on the CPU"
        )
    return value


def warn_if_slow_bf16(precision: str, device: torch.device) -> None:
    if precision == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
        logger.warning(
            "test.precision=bf16 on a CPU without bf16 instructions: PyTorch falls back to "
            "convolutions many times slower than fp32; use it to check bf16 accuracy, not for speed"
        )


def cpu_has_fast_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class AutocastPredictor(nn.Module):
    """Runs the wrapped predictor under :func:`autocast` (bf16/fp16 convolutions and matmuls);
    boxes and scores come back in float32 (see the module docstring)."""

    def __init__(self, model: nn.Module, precision: str):
        super().__init__()
        if PRECISIONS.get(precision) is None:
            raise ConfigError(
                f"AutocastPredictor: precision must be bf16 | fp16, got '{precision}'"
            )
        self.model, self.precision = model, precision

    @property
    def class_names(self):
        return self.model.class_names

    def forward(self, batch: List[dict]) -> List[Dict[str, Tensor]]:
        device = next(self.model.parameters()).device
        with autocast(device, self.precision):
            return self.model(batch)
