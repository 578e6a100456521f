"""Optimizer and learning-rate schedule: SGD with per-group weight decay, linear warmup, then
multi-step or cosine decay. The schedule is a pure function of the iteration, so resuming only needs
the iteration number (the scheduler state holds nothing else).
"""

from __future__ import annotations

import logging
import math
from typing import Dict, Iterable, List, Sequence

import torch
from torch import nn

logger = logging.getLogger("detkit")

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def scaled_base_lr(base_lr: float, ims_per_batch: int, reference_batch_size: int) -> float:
    """The linear scaling rule (Goyal et al. 2017): lr grows with the total batch size."""
    if ims_per_batch == reference_batch_size:
        return float(base_lr)
    lr = float(base_lr) * ims_per_batch / reference_batch_size
    logger.info(
        "solver: ims_per_batch=%d differs from reference_batch_size=%d: base_lr %g scaled linearly "
        "to %g",
        ims_per_batch,
        reference_batch_size,
        base_lr,
        lr,
    )
    return lr


def param_groups(model: nn.Module, weight_decay: float, weight_decay_norm: float) -> List[Dict]:
    """Trainable parameters in two groups: norm-layer parameters and all biases get
    ``weight_decay_norm`` (decaying a GN/BN scale towards 0 only fights the normalisation), the rest
    ``weight_decay``. Each parameter appears once even when modules share it."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if isinstance(module, _NORM_TYPES) or name == "bias" else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": float(weight_decay)},
        {"params": no_decay, "weight_decay": float(weight_decay_norm)},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: nn.Module,
    *,
    base_lr: float,
    momentum: float,
    weight_decay: float,
    weight_decay_norm: float,
) -> torch.optim.SGD:
    groups = param_groups(model, weight_decay, weight_decay_norm)
    if not groups:
        raise ValueError(
            "the model has no trainable parameters (is model.backbone.freeze_at too high?)"
        )
    return torch.optim.SGD(groups, lr=base_lr, momentum=momentum)


class WarmupSchedule:
    """lr(it) = base_lr * warmup(it) * decay(it).

    warmup rises linearly from ``warmup_factor`` at iteration 0 to 1 at ``warmup_iters``;
    decay is ``gamma ** (number of steps <= it)`` (multistep) or ``0.5 * (1 + cos(pi * it / max_iter))``
    (cosine). ``step(it)`` writes the lr for iteration ``it`` into every optimizer group.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        base_lr: float,
        max_iter: int,
        schedule: str = "multistep",
        steps: Sequence[int] = (),
        gamma: float = 0.1,
        warmup_iters: int = 0,
        warmup_factor: float = 0.001,
    ):
        if schedule not in ("multistep", "cosine"):
            raise ValueError(
                f"solver.lr_schedule must be 'multistep' or 'cosine', got '{schedule}'"
            )
        bad = [s for s in steps if not 0 < s <= max_iter]
        if schedule == "multistep" and (bad or list(steps) != sorted(steps)):
            raise ValueError(
                f"solver.steps must be increasing and within (0, max_iter={max_iter}], got {list(steps)}"
            )
        self.optimizer, self.base_lr, self.max_iter = optimizer, float(base_lr), int(max_iter)
        self.schedule, self.steps, self.gamma = schedule, [int(s) for s in steps], float(gamma)
        self.warmup_iters, self.warmup_factor = int(warmup_iters), float(warmup_factor)
        self.last_iter = -1

    def factor(self, it: int) -> float:
        if self.schedule == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * min(it, self.max_iter) / self.max_iter))
        else:
            decay = self.gamma ** sum(1 for s in self.steps if s <= it)
        if it < self.warmup_iters:
            alpha = it / self.warmup_iters
            decay *= self.warmup_factor * (1.0 - alpha) + alpha
        return decay

    def lr_at(self, it: int) -> float:
        return self.base_lr * self.factor(it)

    def step(self, it: int) -> float:
        lr = self.lr_at(it)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.last_iter = it
        return lr

    def state_dict(self) -> Dict:
        return {
            "last_iter": self.last_iter,
            "base_lr": self.base_lr,
            "schedule": self.schedule,
            "max_iter": self.max_iter,
        }

    def load_state_dict(self, state: Dict) -> None:
        self.last_iter = int(state["last_iter"])
        changed = {
            k: (state[k], getattr(self, k))
            for k in ("base_lr", "schedule", "max_iter")
            if k in state and state[k] != getattr(self, k)
        }
        if changed:
            logger.warning(
                "lr schedule differs from the checkpoint's (saved, now): %s; using the current one",
                changed,
            )


def current_lrs(optimizer: torch.optim.Optimizer) -> Iterable[float]:
    return [g["lr"] for g in optimizer.param_groups]
