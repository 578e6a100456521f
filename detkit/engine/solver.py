"""Optimizer and learning-rate schedule: SGD (or AdamW) with per-group weight decay, linear warmup,
then multi-step or cosine decay. The schedule is a pure function of the iteration, so resuming only needs
the iteration number (the scheduler state holds nothing else).
"""

from __future__ import annotations

import logging
import math
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from detkit.errors import ConfigError

logger = logging.getLogger("detkit")

SCHEDULES = ("multistep", "cosine")
OPTIMIZERS = ("SGD", "AdamW")
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
    optimizer: str = "SGD",
) -> torch.optim.Optimizer:
    """``optimizer``: SGD with ``momentum``, or AdamW (decoupled weight decay; its betas are
    PyTorch's defaults and ``momentum`` is not used). AdamW wants a far smaller ``base_lr`` (~1e-3)
    and a larger ``weight_decay`` (~0.05) than SGD."""
    if optimizer not in OPTIMIZERS:
        raise ConfigError(
            f"solver.optimizer must be one of {', '.join(OPTIMIZERS)}; got '{optimizer}'"
        )
    groups = param_groups(model, weight_decay, weight_decay_norm)
    if not groups:
        raise ConfigError(
            "the model has no trainable parameters (is model.backbone.freeze_at too high?)"
        )
    if optimizer == "AdamW":
        # the fused kernel: one pass over all parameters instead of one per tensor list
        devices = {p.device.type for g in groups for p in g["params"]}
        fused = devices <= {"cpu", "cuda"} or None
        return torch.optim.AdamW(groups, lr=base_lr, fused=fused)
    return torch.optim.SGD(groups, lr=base_lr, momentum=momentum)


def schedule_problems(schedule: str, steps: Sequence[int], max_iter: int) -> List[Tuple[str, str]]:
    """(solver key, message) for each schedule value ``WarmupSchedule`` cannot use."""
    problems = []
    if schedule not in SCHEDULES:
        problems.append(("lr_schedule", f"must be multistep or cosine, got '{schedule}'"))
    steps = list(steps)
    if schedule == "multistep" and (
        steps != sorted(steps) or any(not 0 < x <= max_iter for x in steps)
    ):
        problems.append(
            ("steps", f"must be increasing and within (0, solver.max_iter={max_iter}], got {steps}")
        )
    return problems


def check_solver(cfg) -> None:
    """What the schema cannot check key by key (each value's choices and range are checked at load):
    ``solver.steps`` increasing and within ``solver.max_iter``, as one config error naming the file
    that set them -- before any model or dataset is built."""
    s = cfg.solver
    problems = schedule_problems(s.lr_schedule, s.steps, s.max_iter)
    if problems:
        raise ConfigError(
            "; ".join(
                f"solver.{k} {msg} (set in {cfg.origin('solver.' + k)})" for k, msg in problems
            )
        )


def micro_batch_size(total: int, accumulate: int, world_size: int) -> int:
    """Images per process and micro-batch: ``solver.ims_per_batch`` is the total of one step."""
    if accumulate < 1 or total % (world_size * accumulate):
        raise ConfigError(
            f"solver.ims_per_batch={total} must be divisible by the number of processes "
            f"({world_size}) x solver.accumulate ({accumulate})"
        )
    per = total // (world_size * accumulate)
    logger.info(
        "batch: %d images per step = %d processes x %d accumulation steps x %d images",
        total,
        world_size,
        accumulate,
        per,
    )
    return per


def build_solver(model: nn.Module, s) -> Tuple[torch.optim.Optimizer, "WarmupSchedule"]:
    """The optimizer and lr schedule of the config's ``solver`` section ``s``."""
    lr = scaled_base_lr(s.base_lr, s.ims_per_batch, s.reference_batch_size)
    optimizer = build_optimizer(
        model,
        base_lr=lr,
        momentum=s.momentum,
        weight_decay=s.weight_decay,
        weight_decay_norm=s.weight_decay_norm,
        optimizer=s.optimizer,
    )
    schedule = WarmupSchedule(
        optimizer,
        base_lr=lr,
        max_iter=int(s.max_iter),
        schedule=s.lr_schedule,
        steps=s.steps,
        gamma=s.gamma,
        warmup_iters=s.warmup_iters,
        warmup_factor=s.warmup_factor,
    )
    return optimizer, schedule


def clip_and_step(
    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, clip_grad_norm: float
) -> bool:
    """Clip the gradients to a total norm of ``clip_grad_norm`` (0 = no clipping), step, and zero
    the gradients. Returns False, without a step, when the norm is not finite and no fp16 loss
    scaler is on (an enabled scaler skips such a step itself and lowers its scale)."""
    if clip_grad_norm > 0:
        scaler.unscale_(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
        if not scaler.is_enabled() and not torch.isfinite(norm):
            return False
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return True


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
        problems = schedule_problems(schedule, steps, max_iter)
        if problems:
            raise ConfigError("; ".join(f"solver.{key} {msg}" for key, msg in problems))
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

    def rescale(self, max_iter: int) -> None:
        """Shorten (or lengthen) the schedule to ``max_iter`` iterations: the cosine runs over the new
        length, multistep steps move proportionally (kept within 1..max_iter), so the schedule still
        ends at its final lr. Warmup is unchanged (it may already be under way)."""
        max_iter = int(max_iter)
        if max_iter < 1:
            raise ValueError(f"max_iter must be at least 1, got {max_iter}")
        ratio = max_iter / self.max_iter
        self.steps = [min(max_iter, max(1, round(s * ratio))) for s in self.steps]
        self.max_iter = max_iter

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
