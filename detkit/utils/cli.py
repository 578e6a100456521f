"""Command-line helpers: errors a user can fix end the tool with one clear line, not a traceback."""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Exit with status 1 and the message alone for errors whose message says what to fix:
    config errors, missing or malformed datasets, unreadable checkpoints, divergence, an output
    folder in use. Anything else is a bug and keeps its traceback."""
    from detkit.config import ConfigError
    from detkit.data import DatasetError
    from detkit.engine import CheckpointError, DivergenceError, OutputDirInUse

    try:
        yield
    except (
        ConfigError,
        DatasetError,
        CheckpointError,
        DivergenceError,
        OutputDirInUse,
        FileNotFoundError,
    ) as e:
        logger = logging.getLogger("detkit")
        if logger.handlers:
            logger.error("%s: %s", type(e).__name__, e)
        else:
            sys.stderr.write(f"{type(e).__name__}: {e}\n")
        sys.exit(1)
