"""Atomic writes: every file detkit produces goes through here.

Checkpoints, the resolved config, metrics, the event log, synthetic images and annotations and
evaluation outputs are written with :func:`atomic_open`: a temporary file in the same folder,
flushed and fsync'ed, renamed over the target with ``os.replace`` (atomic on POSIX), then the folder
fsync'ed so the rename itself survives a power cut. A process killed mid-write leaves the previous
file intact; a failed write (a full disk, a read-only folder) removes its temporary file and raises
:class:`WriteError` naming the file and the system's reason. Temporary names start with ``.tmp-``
so a later run can recognise and remove what a killed one left behind.

Reading checkpoints and weight files is ``detkit.checkpoint``'s. torch is imported inside
:func:`atomic_save`: ``detkit.config`` uses this module and stays importable without loading torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import IO, Any, Iterator, Union

from detkit.errors import WriteError

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
