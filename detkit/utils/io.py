"""The one low-level I/O layer: atomic writes, and reading checkpoints and weight files.

Writes: every file detkit produces (checkpoints, the resolved config, metrics, the event log,
synthetic images and annotations, evaluation outputs) goes through :func:`atomic_open`: a temporary
file in the same folder, flushed and fsync'ed, renamed over the target with ``os.replace`` (atomic
on POSIX), then the folder fsync'ed so the rename itself survives a power cut. A process killed
mid-write leaves the previous file intact; a failed write removes its temporary file. Temporary
names start with ``.tmp-`` so a later run can recognise and remove what a killed one left behind.

Reads: :func:`load_checkpoint` is the one place a checkpoint or weights file is opened, and
:func:`load_model_weights` the one place tensors are copied into a model. Every error names the
file (torch's own "PytorchStreamReader failed ..." does not).

torch is imported inside the functions that need it: ``detkit.config`` uses this module and stays
importable without loading torch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Dict, Iterator, Optional, Sequence, Union

from detkit.errors import DetkitError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("detkit")

PathLike = Union[str, os.PathLike]
TMP_PREFIX = ".tmp-"


# ---------------------------------------------------------------------------------------------
# atomic writes


def _temp_path(path: Path) -> Path:
    # pid + random: several processes (ranks, dataset generators) may write the same target at once
    return path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}.{secrets.token_hex(4)}")


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


def _publish(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing (``"w"`` text as UTF-8, or ``"wb"``);
    when the ``with`` block ends normally it is fsync'ed and renamed over ``path``; when the block
    raises (including KeyboardInterrupt) it is removed and ``path`` is left as it was."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    # os.open with 0o666 (minus the umask, as open() does): mkstemp would make every file 0600
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, encoding="utf-8" if mode == "w" else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(data: bytes, path: PathLike) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(text: str, path: PathLike) -> Path:
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def write_json(obj: Any, path: PathLike, indent: Union[int, None, str] = "auto") -> Path:
    """Write JSON atomically. ``indent="auto"``: 2 for a dict (metrics: read by people), none for a
    list (detection results: possibly millions of entries)."""
    if indent == "auto":
        indent = None if isinstance(obj, list) else 2
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=indent)
    return Path(path)


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` atomically (checkpoints)."""
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def atomic_link_or_copy(src: PathLike, dst: PathLike) -> None:
    """Make ``dst`` the same content as ``src`` atomically: a hard link when the file system allows
    it (no second write of a large file), else a copy."""
    src, dst = Path(src), Path(dst)
    tmp = _temp_path(dst)
    try:
        os.link(src, tmp)
    except OSError:
        with open(src, "rb") as f, atomic_open(dst, "wb") as out:
            shutil.copyfileobj(f, out)
        return
    try:
        _publish(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# checkpoints and weight files


class CheckpointError(DetkitError, RuntimeError):
    """A checkpoint or weights file cannot be read or does not hold what it should."""


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """The file does not exist (also a FileNotFoundError, as the API raised before)."""


class CheckpointMismatch(CheckpointError, ValueError):
    """The file is readable but its content does not fit: not a detkit checkpoint, no state dict,
    or tensors that do not fit the model (also a ValueError, as the API raised before)."""


def load_checkpoint(path: PathLike, require: Sequence[str] = (), what: str = "") -> Dict[str, Any]:
    """The dict a checkpoint or weights file holds, on CPU.

    ``require``: keys that must be present, e.g. ``("model", "config")`` for a file the model is
    rebuilt from; ``what`` names that kind of file in the error.
    """
    import torch

    if not os.path.isfile(path):
        raise CheckpointNotFound(
            f"checkpoint not found: {path} (detkit never downloads weights; give the path of a "
            "local file)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, bad pickle, ...: all mean "this file is damaged"
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise CheckpointMismatch(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    missing = [k for k in require if k not in obj]
    if missing:
        raise CheckpointMismatch(
            f"{path} lacks {missing}: not {what or 'a checkpoint with ' + str(list(require))}"
        )
    return obj


def state_dict_of(obj: Dict[str, Any], path: PathLike) -> Dict[str, "torch.Tensor"]:
    """The state dict in a loaded file: a detkit checkpoint's ``model``, a ``state_dict`` entry,
    or the dict itself (a plain ``torch.save(model.state_dict())``)."""
    import torch

    state = obj.get("model", obj.get("state_dict", obj))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointMismatch(
            f"{path} holds no state dict of tensors (expected a detkit checkpoint with "
            "'model', or a plain state dict)"
        )
    return state


def load_state_file(path: PathLike) -> Dict[str, "torch.Tensor"]:
    """The state dict of a weights file (e.g. torchvision's, for conversion)."""
    return state_dict_of(load_checkpoint(path), path)


def load_model_weights(
    model: "torch.nn.Module",
    path: PathLike,
    *,
    strict: bool,
    checkpoint: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Load detector weights from a detkit checkpoint (``{"model": ...}``) or a plain state dict
    into ``model``; returns the file's other entries (class names, config, ...).

    ``strict`` (testing, the API): the file must hold exactly the model's tensors with their
    shapes, else an error naming the file and the keys. Not strict (``model.weights`` for
    fine-tuning): tensors whose shape differs, e.g. the predictor of another number of classes,
    are skipped with a warning. ``checkpoint``: the file's content when the caller loaded it
    already (to read the class names before building the model), so it is not read twice.
    """
    obj = load_checkpoint(path) if checkpoint is None else checkpoint
    state = dict(state_dict_of(obj, path))
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if strict and (mismatched or missing or unexpected):
        detail = "; ".join(
            f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
            for k in mismatched[:3]
        )
        raise CheckpointMismatch(
            f"{path} does not fit the model built from the config: {len(mismatched)} tensors "
            f"differ in shape ({detail}), {len(missing)} are missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} are not used by the model (e.g. {unexpected[:3]}); "
            "is model.num_classes / the backbone depth / the neck / roi_heads.context right?"
        )
    for k in mismatched:
        state.pop(k)
    _warn_unused(path, mismatched, missing, unexpected)
    model.load_state_dict(state, strict=False)
    logger.info("loaded model weights from %s", path)
    return {k: v for k, v in obj.items() if k != "model"} if "model" in obj else {}


def _warn_unused(path: PathLike, mismatched, missing, unexpected) -> None:
    if mismatched:
        logger.warning(
            "%s: %d tensors skipped for another shape (kept at their initialisation): %s",
            path,
            len(mismatched),
            mismatched[:6],
        )
    if missing:
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
