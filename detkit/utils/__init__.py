"""Small helpers shared by the tools and the engine."""

from .logger import setup_logging
from .rng import get_rng_state, seed_all, set_rng_state

__all__ = ["get_rng_state", "seed_all", "set_rng_state", "setup_logging"]
