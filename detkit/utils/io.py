"""The one low-level I/O layer: atomic writes, and reading checkpoints and weight files.

Writes: every file detkit produces (checkpoints, the resolved config, metrics, the event log,
synthetic images and annotations, evaluation outputs) goes through :func:`atomic_open`: a temporary
file in the same folder, flushed and fsync'ed, renamed over the target with ``os.replace`` (atomic
on POSIX), then the folder fsync'ed so the rename itself survives a power cut. A process killed
mid-write leaves the previous file intact; a failed write (a full disk, a read-only folder) removes
its temporary file and raises :class:`WriteError` naming the file and the system's reason. Temporary
names start with ``.tmp-`` so a later run can recognise and remove what a killed one left behind.

Reads: :func:`load_checkpoint` is the one place a checkpoint or weights file is opened, and
:func:`load_model_weights` the one place tensors are copied into a model. Every error names the
file (torch's own "PytorchStreamReader failed ..." does not). detectron2's files (zoo ``.pkl``,
training ``.pth``) and Caffe2 ImageNet ``.pkl`` backbones come back converted to detkit's names
(``detkit.modeling.detectron2``), so they work wherever a checkpoint is accepted. ``.pkl`` files are
read by an unpickler that builds only dicts, lists, strings, numbers and numpy arrays: a weights file
from the internet cannot run code.

torch is imported inside the functions that need it: ``detkit.config`` uses this module and stays
importable without loading torch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import secrets
import shutil
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Dict, Iterator, Optional, Sequence, Union

from detkit.errors import CheckpointError, WriteError

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


def write_error(path: PathLike, error: OSError, what: str = "write") -> WriteError:
    """The :class:`WriteError` for ``error`` met while writing ``path``. ``error.filename`` is not
    used: for an atomic write it names the temporary file, which no longer exists."""
    if isinstance(error, WriteError):
        return error
    reason = error.strerror or str(error) or type(error).__name__
    wrapped = WriteError(f"cannot {what} {path}: {reason}")
    wrapped.errno = error.errno
    return wrapped


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing (``"w"`` text as UTF-8, or ``"wb"``);
    when the ``with`` block ends normally it is fsync'ed and renamed over ``path``; when the block
    raises (including KeyboardInterrupt) it is removed and ``path`` is left as it was.

    An ``OSError`` on the way (the folder cannot be made, the disk is full, the file system is
    read-only) becomes a :class:`WriteError` naming ``path`` (not the temporary name) and the
    reason: the user can act on one line, and the old file is known to be intact."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', got {mode!r}")
    path = Path(path)
    tmp = _temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # os.open with 0o666 (minus the umask, as open() does): mkstemp would make every file 0600
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        raise write_error(path, e) from None
    try:
        with os.fdopen(fd, mode, encoding="utf-8" if mode == "w" else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(path, e) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def ensure_output_dir(path: PathLike) -> Path:
    """Create the folder ``path`` (and its parents) and prove that a file can be created in it, so
    an output folder under a regular file, on a read-only file system or without permission fails
    at the start, with one :class:`WriteError` line, rather than at the first checkpoint."""
    path = Path(path)
    probe = _temp_path(path / "write-test")
    try:
        path.mkdir(parents=True, exist_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.unlink(probe)
    except OSError as e:
        raise write_error(path, e, what="write to the output folder") from None
    return path


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


def atomic_copy(src: PathLike, dst: PathLike) -> Path:
    """Write ``dst`` as a byte copy of ``src``, atomically. A copy and not a hard link: two names
    for one file are damaged together, and a backup must survive damage to the original."""
    with open(src, "rb") as f, atomic_open(dst, "wb") as out:
        shutil.copyfileobj(f, out, 16 * 2**20)
    return Path(dst)


# ---------------------------------------------------------------------------------------------
# checkpoints and weight files


def _first_sentence(error: BaseException) -> str:
    """torch's reader errors go on for three sentences of advice about miniz; the first one says
    what failed, and the rest would turn the tools' one-line error into a paragraph."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text.split(". ")[0].rstrip(".")


def load_checkpoint(path: PathLike, require: Sequence[str] = (), what: str = "") -> Dict[str, Any]:
    """The dict a checkpoint or weights file holds, on CPU.

    ``require``: keys that must be present, e.g. ``("model", "config")`` for a file the model is
    rebuilt from; ``what`` names that kind of file in the error.
    """
    import torch

    if not os.path.isfile(path):
        raise CheckpointError(
            f"checkpoint not found: {path} (detkit never downloads weights; give the path of a "
            "local file)"
        )
    try:
        if Path(path).suffix == ".pkl":
            obj = load_array_pickle(path)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except _RefusedGlobal as e:
        raise CheckpointError(f"refused to read {path}: {e}") from None
    except Exception as e:  # truncated zip, bad pickle, ...: all mean "this file is damaged"
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(e).__name__}: {_first_sentence(e)} (the file "
            "is truncated or damaged, or is not a checkpoint)"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    if "config" not in obj:  # a detkit checkpoint is never converted
        from detkit.modeling.detectron2 import to_detkit_checkpoint

        obj = to_detkit_checkpoint(obj, path) or obj
    missing = [k for k in require if k not in obj]
    if missing:
        raise CheckpointError(
            f"{path} lacks {missing}: not {what or 'a checkpoint with ' + str(list(require))}"
        )
    return obj


# what a weights pickle may build: numpy arrays (and their dtypes and scalars), plus the plain
# containers pickle makes without a global. Bytes pickled by Python 3 with protocol 2 come through
# _codecs.encode; Python 2 pickles (MSRA's R-50.pkl) need encoding="latin1" for the array data.
_ARRAY_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # arrays pickled with protocol 5
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
}


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ARRAY_PICKLE_GLOBALS:
            raise _RefusedGlobal(
                f"it refers to {module}.{name}; a weights .pkl may hold only dicts, lists, "
                "strings, numbers and numpy arrays (refused: unpickling it could run code)"
            )
        if module.startswith("numpy.core."):  # numpy 2 moved numpy.core to numpy._core
            import numpy

            if hasattr(numpy, "_core"):
                module = "numpy._core." + module[len("numpy.core.") :]
        return super().find_class(module, name)


def load_array_pickle(path: PathLike) -> Any:
    """Read a ``.pkl`` weights file (detectron2's model zoo, Caffe2 ImageNet blobs) with an
    unpickler that refuses every global except numpy's array reconstruction."""
    with open(path, "rb") as f:
        return _ArrayUnpickler(f, encoding="latin1").load()


def state_dict_of(obj: Dict[str, Any], path: PathLike) -> Dict[str, "torch.Tensor"]:
    """The state dict in a loaded file: a detkit checkpoint's ``model``, a ``state_dict`` entry,
    or the dict itself (a plain ``torch.save(model.state_dict())``)."""
    import torch

    state = obj.get("model", obj.get("state_dict", obj))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
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
    # BatchNorm's batch counters hold no weights: a file from a model with trainable BN fits a
    # model that freezes those layers (FrozenBN has no counter), and the other way round
    counter = "num_batches_tracked"
    state = {k: v for k, v in state.items() if k in own or not k.endswith(counter)}
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state and not k.endswith(counter)]
    unexpected = [k for k in state if k not in own]
    if strict and (mismatched or missing or unexpected):
        raise CheckpointError(
            _mismatch_message(path, obj, state, own, mismatched, missing, unexpected)
        )
    for k in mismatched:
        state.pop(k)
    _warn_unused(path, mismatched, missing, unexpected)
    model.load_state_dict(state, strict=False)
    logger.info("loaded model weights from %s", path)
    return {k: v for k, v in obj.items() if k != "model"} if "model" in obj else {}


def _names(keys: Sequence[str], limit: int = 6) -> str:
    """``a, b, c (+N more)``: enough names to recognise the part, not a wall of text."""
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _parts(keys: Sequence[str]) -> str:
    """Tensor names grouped by the part they belong to (``backbone.layer4.* (27)``), so that one
    missing stage or neck reads as one item; a few names are listed in full."""
    if len(keys) <= 3:
        return ", ".join(keys)
    counts: Dict[str, int] = {}
    for k in keys:
        part = ".".join(k.split(".")[:2])
        counts[part] = counts.get(part, 0) + 1
    groups = [f"{p}.* ({n})" for p, n in counts.items()]
    return _names(groups)


def _mismatch_message(path, obj, state, own, mismatched, missing, unexpected) -> str:
    """What does not fit, by name and shape, and which config the file fits instead."""
    parts = [f"{path} does not fit the model built from the config:"]
    if mismatched:
        shapes = [
            f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})" for k in mismatched
        ]
        parts.append(f"{len(mismatched)} tensors differ in shape: {_names(shapes, 4)};")
    if missing:
        parts.append(
            f"{len(missing)} are missing (model tensors not in the file): {_parts(missing)};"
        )
    if unexpected:
        parts.append(f"{len(unexpected)} are not used by the model: {_parts(unexpected)};")
    from detkit.modeling.config_match import configs_fitting, describe_foreign

    foreign = describe_foreign(state)
    if foreign:
        return " ".join(parts + [foreign])
    if "config" in obj:
        parts.append("the file stores the config it was made with: Detector.from_checkpoint")
        parts.append("rebuilds that model;")
    fitting = configs_fitting(
        {k: tuple(v.shape) for k, v in state.items()}, source=str(obj.get("source", ""))
    )
    if fitting:
        parts.append(f"the file fits {' or '.join(fitting)}")
    else:
        parts.append(
            "check model.num_classes, the backbone (depth, groups), the neck and the heads"
        )
    return " ".join(parts)


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
