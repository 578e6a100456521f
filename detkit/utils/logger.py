"""Logging setup for the tools: the ``detkit`` logger to the console (rank 0) and to a file.

The package itself only ever calls ``logging.getLogger("detkit")``; handlers are attached here, by the
entry points (tools/train.py, tools/test.py), never at import time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator, Optional

_FORMAT = "[%(asctime)s %(levelname)s] %(message)s"
_DATE = "%m/%d %H:%M:%S"
_OURS = "_detkit_handler"  # marks the handlers setup_logging added, so a second call replaces them


class TqdmHandler(logging.StreamHandler):
    """A console handler that writes through ``tqdm.write`` so log lines do not break a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # logging must never raise
            self.handleError(record)


def setup_logging(
    output_dir: Optional[str] = None,
    rank: int = 0,
    level: int = logging.INFO,
    console: Optional[bool] = None,
) -> logging.Logger:
    """Configure the ``detkit`` logger and return it.

    Rank 0 logs to stderr (``console=None`` means: only rank 0) and, with ``output_dir``, to
    ``<output_dir>/log.txt``; other ranks log to ``log_rank<r>.txt`` only, so a warning raised on a
    single rank is never lost. Calling it again replaces the handlers it added before. The logger
    stops propagating (a root handler of the caller's would print every line twice): wrap the call
    in :func:`restored_logger` where the process goes on afterwards (a tool's ``main`` in-process).
    """
    logger = logging.getLogger("detkit")
    logger.setLevel(level)
    logger.propagate = False
    for handler in [h for h in logger.handlers if getattr(h, _OURS, False)]:
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(_FORMAT, datefmt=_DATE)
    if console if console is not None else rank == 0:
        _add(logger, TqdmHandler(sys.stderr), formatter)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        name = "log.txt" if rank == 0 else f"log_rank{rank}.txt"
        _add(logger, logging.FileHandler(os.path.join(output_dir, name), mode="a"), formatter)
    return logger


def _add(logger: logging.Logger, handler: logging.Handler, formatter: logging.Formatter) -> None:
    handler.setFormatter(formatter)
    setattr(handler, _OURS, True)
    logger.addHandler(handler)


@contextlib.contextmanager
def restored_logger() -> Iterator[logging.Logger]:
    """Put the ``detkit`` logger back as it was (handlers, level, propagation) on exit, closing the
    handlers added inside: a tool's ``main`` called in-process, by a test or a notebook, leaves no
    console or file handler behind and lets the caller's own logging (pytest's ``caplog``) see
    detkit's records again."""
    logger = logging.getLogger("detkit")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    try:
        yield logger
    finally:
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
