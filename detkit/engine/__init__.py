"""Training and testing: the loop, checkpoints, distributed setup, solver, logging of metrics.

``train_main(cfg, output_dir, resume)`` and ``evaluate_main(cfg, weights, output_dir=None, ...)``
(results next to the weights unless ``output_dir`` is given) are what
tools/train.py and tools/test.py call; ``Trainer`` is the loop itself.
"""

from .checkpoint import Checkpointer, atomic_save, load_model_weights
from .distributed import DistContext, init_distributed
from .inference import run_inference
from .launch import evaluate_main, train_main
from .solver import WarmupSchedule, build_optimizer, param_groups, scaled_base_lr
from .trainer import Trainer

__all__ = [
    "Checkpointer",
    "DistContext",
    "Trainer",
    "WarmupSchedule",
    "atomic_save",
    "build_optimizer",
    "evaluate_main",
    "init_distributed",
    "load_model_weights",
    "param_groups",
    "run_inference",
    "scaled_base_lr",
    "train_main",
]
