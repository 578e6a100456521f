"""Seeding and saving/restoring every random number generator a training step touches."""

from __future__ import annotations

import logging
import random
from typing import Any, Dict

import numpy as np
import torch

logger = logging.getLogger("detkit")


def seed_all(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device)."""
    seed = int(seed) % (2**32)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds all CUDA devices


def get_rng_state() -> Dict[str, Any]:
    """The state of the python, numpy, torch and (when available) CUDA generators of this process."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned; CUDA states are skipped (with a warning) when the
    number of visible devices changed."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu() if hasattr(state["torch"], "cpu") else state["torch"])
    cuda = state.get("cuda")
    if cuda is None or not torch.cuda.is_available():
        return
    if len(cuda) != torch.cuda.device_count():
        logger.warning(
            "not restoring CUDA RNG states: saved for %d devices, %d visible now",
            len(cuda),
            torch.cuda.device_count(),
        )
        return
    torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


class preserve_rng:
    """Context manager: whatever runs inside (e.g. a validation pass) leaves every generator as it
    found it, so evaluating during training never changes the training run."""

    def __enter__(self) -> "preserve_rng":
        self._state = get_rng_state()
        return self

    def __exit__(self, *exc: Any) -> None:
        set_rng_state(self._state)
