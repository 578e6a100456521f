"""Checkpoints that survive crashes: atomic writes, keep-N rotation, resume with fallback.

Files in the output folder::

    model_0005000.pth   periodic full training state (the newest ``keep`` are kept)
    last.pth            the newest full state: a file of its own with the same bytes as the newest
                        periodic one (not a hard link, which damage to either would break both)
    best.pth            model weights at the best validation AP so far
    model_final.pth     model weights at the end of training (what tools/test.py usually loads)

Every file is written with ``detkit.utils.io.atomic_save`` (a temporary name in the same folder,
fsync, ``os.replace``), so a process killed mid-write, or a full disk, leaves the previous file
intact; stale temporary files are removed on the next start. No file holding NaN/Inf weights is
ever written, and resuming skips such files (written by versions before this check).
"""

from __future__ import annotations

import logging
import os
import re
import socket
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch

from detkit.checkpoint import load_checkpoint, load_model_weights
from detkit.errors import CheckpointError, TrainingError, WriteError
from detkit.utils.distributed import all_gather_objects
from detkit.utils.io import TMP_PREFIX, atomic_copy, atomic_save

logger = logging.getLogger("detkit")

LAST, BEST, FINAL = "last.pth", "best.pth", "model_final.pth"
_PERIODIC = re.compile(r"^model_(\d{7,})\.pth$")
TRAINING_KEYS = ("model", "optimizer", "iteration")

# The writing lives in detkit.utils.io and the reading in detkit.checkpoint (one implementation
# each for the whole package); the engine's callers import them from here.
__all__ = [
    "BEST",
    "FINAL",
    "LAST",
    "CheckpointError",
    "Checkpointer",
    "atomic_save",
    "load_latest_on_all_ranks",
    "load_model_weights",
    "non_finite_tensors",
    "periodic_iteration",
]


def non_finite_tensors(named: Iterable[Tuple[str, torch.Tensor]]) -> List[str]:
    """Names of the floating-point tensors holding a NaN or Inf. One stacked check and one device
    sync for the whole set (the trainer runs it after every optimizer step)."""
    items = [(n, t.detach()) for n, t in named if t.is_floating_point()]
    if not items:
        return []
    finite = torch.stack([torch.isfinite(t).all() for _, t in items])
    if bool(finite.all()):
        return []
    return [n for (n, _), ok in zip(items, finite.tolist()) if not ok]


def _with_note(error: WriteError, note: str) -> WriteError:
    wrapped = WriteError(f"{error}; {note}")
    wrapped.errno = error.errno
    return wrapped


def _non_finite_message(path: os.PathLike, bad: List[str]) -> str:
    return f"{path} holds NaN/Inf in {len(bad)} tensor(s), e.g. {bad[:3]}"


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

    def _check_finite(self, state: Dict[str, Any], path: Path) -> None:
        """The last line of defence: the trainer stops at the first non-finite update, and this
        refuses to let any other path write such weights over a good file."""
        bad = non_finite_tensors(state.get("model", {}).items())
        if bad:
            self.disable("the weights hold NaN/Inf")
            raise CheckpointError(f"refusing to write {path}: the weights hold NaN/Inf ({bad[:3]})")

    def save(self, state: Dict[str, Any], iteration: int) -> Path:
        """Write the full state as ``last.pth`` and copy it to ``model_<iteration>.pth``, rotate.

        ``last.pth`` first: if the copy then fails (a full disk), ``last.pth`` is already the
        newest state, and resuming tries it first."""
        self._check_enabled()
        path = self.dir / f"model_{iteration:07d}.pth"
        self._check_finite(state, path)
        before = [p.name for p in self.resume_candidates()]
        try:
            atomic_save(state, self.dir / LAST)
            atomic_copy(self.dir / LAST, path)
        except WriteError as e:  # the atomic writes left every earlier file as it was
            kept = f"the earlier checkpoints are intact ({', '.join(before)})" if before else ""
            raise _with_note(e, kept or "no earlier checkpoint exists") from None
        self._rotate()
        logger.info("saved checkpoint %s", path)
        return path

    def save_named(self, state: Dict[str, Any], name: str) -> Path:
        """Write ``best.pth``, ``model_final.pth`` or another named file atomically."""
        self._check_enabled()
        self._check_finite(state, self.dir / name)
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
        """The newest readable full training state with finite weights, or None when there is no
        checkpoint at all. A damaged or non-finite file is skipped with a warning naming it, and
        the file used instead is named."""
        failures = []
        for path in self.resume_candidates():
            try:
                state = load_checkpoint(path, require=TRAINING_KEYS, what="a training checkpoint")
                bad = non_finite_tensors(state["model"].items())
                if bad:
                    raise CheckpointError(_non_finite_message(path, bad) + " (a diverged run)")
            except CheckpointError as e:
                failures.append(str(e))
                logger.warning("%s; falling back to an older checkpoint", e)
                continue
            if failures:
                logger.warning(
                    "resuming from %s (iteration %d) after %d unusable checkpoint(s)",
                    path,
                    int(state["iteration"]),
                    len(failures),
                )
            return state, path
        if failures:
            raise CheckpointError(f"no readable checkpoint in {self.dir}: " + "; ".join(failures))
        return None


def load_latest_on_all_ranks(checkpointer: Checkpointer) -> Optional[Tuple[Dict[str, Any], Path]]:
    """:meth:`Checkpointer.load_latest` on every rank (each reads the folder itself), which must
    all find the same file and iteration. A rank that finds another one -- a node that does not see
    rank 0's output folder, a file that changed while the ranks read -- or that cannot read any
    fails every rank: a :class:`TrainingError` lists what each rank and host found, instead of a
    run whose ranks continue from different states, or wait for a rank that died."""
    error: Optional[CheckpointError] = None
    try:
        found = checkpointer.load_latest()
    except CheckpointError as e:  # re-raised below, once the other ranks have heard of it
        error, found = e, None
    mine = None if found is None else (str(found[1]), int(found[0]["iteration"]))
    seen = all_gather_objects((socket.gethostname(), mine, None if error is None else str(error)))
    if error is not None:
        raise error
    for r, (host, _, message) in enumerate(seen):
        if message is not None:
            raise TrainingError(f"--resume failed on rank {r} ({host}): {message}")
    if len({m for _, m, _ in seen}) > 1:
        listing = "; ".join(
            f"rank {r} on {host}: "
            + ("no checkpoint" if m is None else f"{m[0]} (iteration {m[1]})")
            for r, (host, m, _) in enumerate(seen)
        )
        raise TrainingError(
            f"--resume: the processes found different checkpoints in {checkpointer.dir} "
            f"({listing}); every node must see the same --output-dir (a shared file system), "
            "where rank 0 alone writes"
        )
    return found
