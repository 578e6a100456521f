"""The onnxruntime backend's graph: exported once per weights, config and versions, and reused.

The file sits next to the weights (``<weights>.<key16>.onnx``) or, when that folder is not writable
or there is no weights file, in the cache folder (``$DETKIT_CACHE``, else ``~/.cache/detkit``).
``key`` hashes what changes the graph: the model's tensors (names, dtypes, shapes, bytes: so
overrides and from_config are covered), the ``model`` and ``input`` config sections (not
data/solver/test/output_dir: a run writing elsewhere reuses the graph) and the class names, the
opset, and the versions of torch, torchvision, onnx, onnxruntime and detkit (its version and a
digest of its source files). A different key exports again and removes the older files of the same
weights; the file is written atomically after onnxruntime has loaded the exported bytes, and a
cached file that fails to load (truncated, say) is exported again with a warning.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from detkit.errors import WriteError
from detkit.version import __version__

from ..utils.io import atomic_write_bytes
from .exporters import graph_module, onnx_bytes
from .runtime import ort_session

logger = logging.getLogger("detkit")

OPSET = 17
KEY_ENTRY = "detkit_graph_key"  # ONNX metadata entry holding the full cache key


def cache_folder(cache_dir: Optional[str] = None) -> Path:
    """``cache_dir``, else $DETKIT_CACHE, else ~/.cache/detkit."""
    return Path(cache_dir or os.environ.get("DETKIT_CACHE") or Path.home() / ".cache" / "detkit")


def graph_key(model: nn.Module, cfg, opset: int = OPSET) -> str:
    """sha256 (hex) of everything the exported graph depends on (see the module docstring)."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy())
    config = cfg.to_dict()
    h.update(
        json.dumps(
            {
                "model": config["model"],
                "input": config["input"],
                "class_names": list(model.class_names),
                "opset": opset,
                "versions": _versions(),
            },
            sort_keys=True,
            default=str,
        ).encode()
    )
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def _versions() -> Dict[str, str]:
    import onnx
    import onnxruntime
    import torchvision

    source = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]  # the detkit package
    for path in sorted(package.rglob("*.py")):  # the traced code: a change re-exports
        source.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "detkit": __version__,
        "detkit_source": source.hexdigest(),
    }


def _places(weights: Optional[str], cache_dir: Optional[str]) -> List[Tuple[Path, str]]:
    """(folder, file-name prefix) where the graph may be cached, in order of preference."""
    folder = cache_folder(cache_dir)
    if not weights:
        return [(folder, "model")]
    weights_path = Path(weights).resolve()
    path_id = hashlib.sha256(str(weights_path).encode()).hexdigest()[:8]
    places = [(folder, f"{weights_path.name}-{path_id}")]
    if os.access(weights_path.parent, os.W_OK):
        places.insert(0, (weights_path.parent, weights_path.name))
    return places


def _stale_files(folder: Path, prefix: str, keep: Path) -> List[Path]:
    pattern = re.compile(re.escape(prefix) + r"\.[0-9a-f]{16}\.onnx")
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if pattern.fullmatch(p.name) and p.name != keep.name]


def cached_graph(
    model: nn.Module,
    cfg,
    *,
    weights: Optional[str] = None,
    cache_dir: Optional[str] = None,
    opset: int = OPSET,
):
    """(path, session) of the model's ONNX graph: the cached file when its key matches, else a new
    export written to the first writable place (see the module docstring)."""
    key = graph_key(model, cfg, opset)
    places = _places(weights, cache_dir)
    for folder, prefix in places:
        path = folder / f"{prefix}.{key[:16]}.onnx"
        session = _load_cached(path, key) if path.is_file() else None
        if session is not None:
            logger.info("onnxruntime backend: cached graph %s", path)
            _remove(_stale_files(folder, prefix, path))
            return path, session
    what = weights or "the model"
    logger.info(
        "exporting %s to ONNX for the onnxruntime backend (no cached graph for these "
        "weights/config/versions)",
        what,
    )
    start, was_training = time.perf_counter(), model.training
    try:
        data = onnx_bytes(graph_module(model, cfg), opset=opset, metadata={KEY_ENTRY: key})
    finally:
        model.train(was_training)
    session = ort_session(data)  # the bytes load before they are written
    for i, (folder, prefix) in enumerate(places):
        path = folder / f"{prefix}.{key[:16]}.onnx"
        try:
            atomic_write_bytes(data, path)
        except WriteError as e:
            if i == len(places) - 1:
                raise WriteError(f"{e} (set DETKIT_CACHE to a writable folder)") from None
            logger.info(
                "cannot cache the graph next to the weights (%s); using %s", e, places[-1][0]
            )
            continue
        logger.info("exported in %.1f s: %s", time.perf_counter() - start, path)
        _remove(_stale_files(folder, prefix, path))
        return path, session


def _load_cached(path: Path, key: str):
    """A session for the cached file, or None (after a warning, with the file removed) when it
    does not load or holds another graph."""
    try:
        session = ort_session(path)
    except Exception as e:  # onnxruntime's errors (InvalidProtobuf, Fail...) share no base class
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    else:
        found = session.get_modelmeta().custom_metadata_map.get(KEY_ENTRY, "")
        if found == key:
            return session
        reason = f"it holds graph {found[:16] or '(no key)'}"
    logger.warning("cached ONNX graph %s cannot be used (%s); exporting it again", path, reason)
    _remove([path], "the unusable cached graph")
    return None


def _remove(paths: List[Path], what: str = "the older cached graph") -> None:
    for path in paths:
        try:
            path.unlink()
            logger.info("removed %s %s", what, path)
        except OSError as e:
            logger.warning("cannot remove %s %s: %s", what, path, e.strerror or e)
