"""Checkpoints that survive crashes: atomic writes, keep-N rotation, resume with fallback.

Files in the output folder::

    model_0005000.pth   periodic full training state (the newest ``keep`` are kept)
    last.pth            the newest full state (a hard link to the newest periodic file, or a copy)
    best.pth            model weights at the best validation AP so far
    model_final.pth     model weights at the end of training (what tools/test.py usually loads)

Every file is written to a temporary name in the same folder, flushed, fsync'ed and then renamed
over the target with ``os.replace`` (atomic on POSIX), so a process killed mid-write leaves the
previous file intact; stale temporary files are removed on the next start.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

logger = logging.getLogger("detkit")

LAST, BEST, FINAL = "last.pth", "best.pth", "model_final.pth"
_PERIODIC = re.compile(r"^model_(\d{7,})\.pth$")
_TMP_PREFIX = ".tmp-"


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read or does not hold what it should."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: os.PathLike) -> Path:
    """``torch.save`` to a temporary file next to ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # including KeyboardInterrupt: never leave the temporary file behind
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` the same content as ``src`` atomically: a hard link when the file system allows
    it (no second write of a large file), else a copy; either way via a temporary name."""
    tmp = dst.with_name(f"{_TMP_PREFIX}{dst.name}.{os.getpid()}")
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(dst.parent)


def load_file(path: os.PathLike) -> Dict[str, Any]:
    """Load a checkpoint dict on CPU; CheckpointError when the file is unreadable or not a dict."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except Exception as e:  # truncated zip, bad pickle, ...: all mean "this file is damaged"
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


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
        for p in self.dir.glob(_TMP_PREFIX + "*"):
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
                state = load_file(path)
                missing = [k for k in ("model", "optimizer", "iteration") if k not in state]
                if missing:
                    raise CheckpointError(f"{path} lacks {missing}: not a training checkpoint")
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


def load_model_weights(model: torch.nn.Module, path: str, *, strict: bool) -> Dict[str, Any]:
    """Load detector weights from a detkit checkpoint (``{"model": ...}``, e.g. one written by
    tools/convert_weights.py) or a plain state dict; returns the file's other entries.

    ``strict`` (testing): every model tensor must be in the file with its shape, else an error naming
    the keys. Not strict (``model.weights`` for fine-tuning): tensors whose shape differs, e.g. the
    predictor of another number of classes, are skipped with a warning.
    """
    obj = load_file(path)
    state = obj.get("model", obj.get("state_dict", obj))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{path} holds no state dict of tensors (expected a detkit checkpoint with "
            "'model', or a plain state dict)"
        )
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if strict and (mismatched or missing):
        detail = "; ".join(
            f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
            for k in mismatched[:3]
        )
        raise CheckpointError(
            f"{path} does not fit the model built from the config: {len(mismatched)} tensors "
            f"differ in shape ({detail}), {len(missing)} are missing (e.g. {missing[:3]}); "
            "is model.num_classes / the backbone depth / the neck right?"
        )
    for k in mismatched:
        state.pop(k)
    if mismatched:
        logger.warning(
            "%s: %d tensors skipped for another shape (kept at their initialisation): %s",
            path,
            len(mismatched),
            mismatched[:6],
        )
    if missing and not strict:
        logger.warning(
            "%s: %d model tensors not in the file, e.g. %s", path, len(missing), missing[:3]
        )
    if unexpected:
        logger.warning(
            "%s: %d tensors in the file are not used by the model, e.g. %s",
            path,
            len(unexpected),
            unexpected[:3],
        )
    model.load_state_dict(state, strict=False)
    logger.info("loaded model weights from %s", path)
    return {k: v for k, v in obj.items() if k != "model"} if "model" in obj else {}
