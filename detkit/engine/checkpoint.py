"""Checkpoints that survive crashes: atomic writes, keep-N rotation, resume with fallback.

Files in the output folder::

    model_0005000.pth   periodic full training state (the newest ``keep`` are kept)
    last.pth            the newest full state (a hard link to the newest periodic file, or a copy)
    best.pth            model weights at the best validation AP so far
    model_final.pth     model weights at the end of training (what tools/test.py usually loads)

Every file is written with ``detkit.utils.io.atomic_save`` (a temporary name in the same folder,
fsync, ``os.replace``), so a process killed mid-write leaves the previous file intact; stale
temporary files are removed on the next start.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from detkit.utils.io import (
    TMP_PREFIX,
    CheckpointError,
    atomic_link_or_copy,
    atomic_save,
    load_checkpoint,
    load_model_weights,
)

logger = logging.getLogger("detkit")

LAST, BEST, FINAL = "last.pth", "best.pth", "model_final.pth"
_PERIODIC = re.compile(r"^model_(\d{7,})\.pth$")
TRAINING_KEYS = ("model", "optimizer", "iteration")

# The writing and reading live in detkit.utils.io (one implementation for the whole package);
# the engine's callers import them from here.
__all__ = [
    "BEST",
    "FINAL",
    "LAST",
    "CheckpointError",
    "Checkpointer",
    "atomic_save",
    "load_model_weights",
    "periodic_iteration",
]


def periodic_iteration(path: os.PathLike) -> Optional[int]:
    m = _PERIODIC.match(Path(path).name)
    return int(m.group(1)) if m else None


class Checkpointer:
    """Writes and finds the checkpoints of one output folder. Only the main process should write.

    ``keep``: how many periodic files to keep (0 = all). After :meth:`disable` (e.g. the loss
    diverged) every write raises, so no diverged weights can ever replace a good checkpoint.
    """

    def __init__(self, output_dir: os.PathLike, keep: int = 3):
        self.dir = Path(output_dir)
        self.keep = int(keep)
        self.disabled_reason: Optional[str] = None

    def disable(self, reason: str) -> None:
        self.disabled_reason = reason

    def _check_enabled(self) -> None:
        if self.disabled_reason:
            raise RuntimeError(f"refusing to write a checkpoint: {self.disabled_reason}")

    def remove_stale_temporaries(self) -> None:
        """Temporary files a killed run left behind (they are never valid checkpoints)."""
        for p in self.dir.glob(TMP_PREFIX + "*"):
            logger.warning("removing %s, left by an interrupted checkpoint write", p)
            p.unlink(missing_ok=True)

    def periodic_files(self) -> List[Path]:
        """Periodic checkpoints, newest first."""
        found = [(periodic_iteration(p), p) for p in self.dir.glob("model_*.pth")]
        return [p for it, p in sorted((x for x in found if x[0] is not None), reverse=True)]

    def save(self, state: Dict[str, Any], iteration: int) -> Path:
        """Write the full state as ``model_<iteration>.pth``, point ``last.pth`` at it, rotate."""
        self._check_enabled()
        path = atomic_save(state, self.dir / f"model_{iteration:07d}.pth")
        atomic_link_or_copy(path, self.dir / LAST)
        self._rotate()
        logger.info("saved checkpoint %s", path)
        return path

    def save_named(self, state: Dict[str, Any], name: str) -> Path:
        """Write ``best.pth``, ``model_final.pth`` or another named file atomically."""
        self._check_enabled()
        path = atomic_save(state, self.dir / name)
        logger.info("saved %s", path)
        return path

    def _rotate(self) -> None:
        if self.keep <= 0:
            return
        for old in self.periodic_files()[self.keep :]:
            old.unlink(missing_ok=True)

    def resume_candidates(self) -> List[Path]:
        """``last.pth`` first, then the periodic files newest first."""
        last = self.dir / LAST
        return ([last] if last.exists() else []) + self.periodic_files()

    def load_latest(self) -> Optional[Tuple[Dict[str, Any], Path]]:
        """The newest readable full training state, or None when there is none. A damaged file is
        skipped with a warning naming it and the file used instead."""
        failures = []
        for path in self.resume_candidates():
            try:
                state = load_checkpoint(path, require=TRAINING_KEYS, what="a training checkpoint")
            except CheckpointError as e:
                failures.append(str(e))
                logger.warning("%s; falling back to an older checkpoint", e)
                continue
            if failures:
                logger.warning(
                    "resuming from %s after %d unreadable checkpoint(s)", path, len(failures)
                )
            return state, path
        if failures:
            raise CheckpointError(f"no readable checkpoint in {self.dir}: " + "; ".join(failures))
        return None
