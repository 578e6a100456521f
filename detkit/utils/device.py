"""Turning a user's device choice ("auto", "cpu", "cuda", "cuda:1") into a ``torch.device``.

One function for every place a device is chosen (``Detector(device=)``, the tools' ``--device``,
the process setup of training and testing), so they accept the same values and fail the same way:
asking for CUDA where there is none is a :class:`ConfigError` that names the option, not PyTorch's
"Torch not compiled with CUDA enabled" assertion from deep inside ``model.to()``.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from detkit.errors import ConfigError

VALID = "auto, cpu, cuda, cuda:<index>"


def resolve_device(
    device: Optional[Union[str, torch.device]] = "auto", *, option: str = "device"
) -> torch.device:
    """``device`` as a ``torch.device``: ``None`` or ``"auto"`` is CUDA when available, else CPU.

    ``option`` names the setting for the error message (``"--device"`` for a tool, ``"device"`` for the Python API).
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"{option}={str(device)!r} is not a device; use one of {VALID}") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ConfigError(f"{option}={str(device)!r}: detkit runs on {VALID}")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(
            f"{option}={str(device)!r} asks for CUDA, but this machine has no usable CUDA device "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); "
            f"use {option}='cpu', or 'auto' for CUDA only when available"
        )
    if dev.index is not None and dev.index >= count:
        raise ConfigError(
            f"{option}={str(device)!r}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})"
        )
    return dev
