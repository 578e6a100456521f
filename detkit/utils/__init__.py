"""Small helpers shared by the package's layers and the tools."""

from .logger import setup_logging


def __getattr__(name):  # lazy: ``detkit.utils.distributed`` must not import torch (evaluation)
    if name in ("get_rng_state", "seed_all", "set_rng_state"):
        from . import rng

        return getattr(rng, name)
    raise AttributeError(name)


__all__ = ["get_rng_state", "seed_all", "set_rng_state", "setup_logging"]
