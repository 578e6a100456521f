"""Inference backends: the eager model, or its exported ONNX graph run by onnxruntime on the CPU.

``make_predictor(model, cfg, backend)`` builds what ``Detector.predictor`` (and through it
tools/test.py, tools/video.py and the benchmark) calls: a module that takes a list of inference
samples (the ORIGINAL uint8 image plus "size"/"scale", docs/architecture.md) and returns one dict
of torch tensors {"boxes" (N, 4) original pixels, "scores", "labels" 0-based} per image.

- ``eager``: ``detkit.modeling.build.build_predictor`` on the model made inference-only by
  ``optimize_for_inference`` (in place: frozen BN folded into the convolutions, channels_last on
  the CPU; test.fuse_bn / test.memory_format). Everything the config asks for
  (test.scales / test.flip, test.precision, refinement, either resize convention), CPU or GPU.
- ``onnxruntime``: the model exported once to ONNX (``exporters.graph_module``: preprocessing,
  network and NMS in one graph) and run by an onnxruntime session. CPU, float32, one pass at
  input.min_size_test / input.max_size_test, floor rounding and the tensor bilinear resize.
  ``check_backend`` refuses whatever else the config asks, naming the key and the value to set;
  nothing is dropped silently. Needs the optional extra ``pip install 'detkit[export]'``.

The graph is exported once and reused. The file sits next to the weights
(``<weights>.<key16>.onnx``) or, when that folder is not writable or there is no weights file, in
the cache folder (``$DETKIT_CACHE``, else ``~/.cache/detkit``). ``key`` hashes what changes the graph:
the model's tensors (names, dtypes, shapes, bytes: so overrides and from_config are covered), the
``model`` and ``input`` config sections (not data/solver/test/output_dir: a run writing elsewhere
reuses the graph) and the class names, the opset, and the versions of torch,
torchvision, onnx, onnxruntime and detkit (its version and a digest of its source files). A
different key exports again and removes the older files of the same weights; the file is written
atomically after onnxruntime has loaded the exported bytes, and a cached file that fails to load
(truncated, say) is exported again with a warning.

Sessions (``ort_session``) use full graph optimisation, sequential execution and as many intra-op
threads as the machine has physical cores (hyper-threads share a core's vector units).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from detkit.errors import BackendError, WriteError

from ..inference.parallel import ParallelImages, resolve_parallel_images
from ..inference.predictor import build_predictor, optimize_for_inference
from ..structures.resize import resize_scale, resize_size
from ..utils.io import atomic_write_bytes
from ..utils.threads import physical_cores
from .exporters import graph_module, onnx_bytes, unsupported_resize

logger = logging.getLogger("detkit")

BACKENDS = ("eager", "onnxruntime")
OPSET = 17
KEY_ENTRY = "detkit_graph_key"  # ONNX metadata entry holding the full cache key
EXTRA = "pip install 'detkit[export]' (onnx, onnxruntime)"


# ---------------------------------------------------------------------------------------------
# what each backend can run


def check_backend(cfg, backend: str, device: Union[str, torch.device]) -> None:
    """Raise :class:`BackendError` unless ``backend`` can run ``cfg`` on ``device`` as configured.
    Eager runs everything; onnxruntime lists each option its graph lacks (test.precision=auto
    runs the float32 graph; only an explicit bf16/fp16 is refused)."""
    if backend not in BACKENDS:
        raise BackendError(
            f"unknown backend '{backend}' (backend= / --backend); valid: {', '.join(BACKENDS)}"
        )
    if backend == "eager":
        return
    _require_onnxruntime()
    problems = []
    device = torch.device(device)
    if device.type != "cpu":
        problems.append(
            f"device={device} (it runs on the CPU: use device=cpu, or backend eager on {device})"
        )
    t, single = cfg.test, f"input.min_size_test={cfg.input.min_size_test}"
    if t.scales:
        problems.append(
            f"test.scales={list(t.scales)} (multi-scale testing; the graph runs one pass at "
            f"{single}: set test.scales=[])"
        )
    if t.flip:
        problems.append("test.flip=true (flip testing; the graph has no flip: set test.flip=false)")
    if str(t.precision) in ("bf16", "fp16"):
        problems.append(
            f"test.precision={t.precision} (the graph computes in float32: set test.precision=fp32)"
        )
    if cfg.model.roi_heads.refine_iterations > 0:
        problems.append(
            f"model.roi_heads.refine_iterations={cfg.model.roi_heads.refine_iterations} (iterative "
            "refinement with box voting is not in the graph: set model.roi_heads.refine_iterations=0)"
        )
    for key, value, supported in unsupported_resize(cfg):
        problems.append(f"{key}={value} (the graph resizes with {key}={supported}: set it)")
    if problems:
        raise BackendError(
            "backend onnxruntime cannot run this as configured: "
            + "; ".join(problems)
            + "; or use backend eager, which runs all of it"
        )


def _require_onnxruntime() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise BackendError(f"backend onnxruntime needs the optional extra: {EXTRA}") from None


def make_predictor(
    model: nn.Module,
    cfg,
    backend: str = "eager",
    *,
    weights: Optional[str] = None,
    cache_dir: Optional[str] = None,
) -> nn.Module:
    """The predictor of ``backend`` (see the module docstring). ``weights``: the file the model's
    tensors came from (the cached graph goes next to it); ``cache_dir`` overrides $DETKIT_CACHE."""
    device = next(model.parameters()).device
    check_backend(cfg, backend, device)
    images = resolve_parallel_images(cfg, device)  # checked before anything is built
    if backend == "eager":  # folded BN, channels_last on the CPU: test.fuse_bn / memory_format
        predictor = build_predictor(optimize_for_inference(model, cfg), cfg)
        predictor.backend = "eager"
    else:
        path, session = cached_graph(model, cfg, weights=weights, cache_dir=cache_dir)
        predictor = OnnxRuntimePredictor(
            session,
            path,
            min_size=cfg.input.min_size_test,
            max_size=cfg.input.max_size_test,
            class_names=model.class_names,
        )
    # the images of one call side by side on the CPU (test.parallel_images); one image: unchanged
    return ParallelImages(predictor, images) if images > 1 else predictor


# ---------------------------------------------------------------------------------------------
# the predictor


class OnnxRuntimePredictor(nn.Module):
    """The exported graph behind the eager predictor's interface: ``predictor(samples)`` -> one
    {"boxes", "scores", "labels"} dict of CPU tensors per sample. A module without parameters, so
    that .eval()/.train() work where the eager predictor's do; the graph has no training mode."""

    backend = "onnxruntime"

    def __init__(self, session, path: Union[str, Path], *, min_size, max_size, class_names):
        super().__init__()
        self.session, self.path = session, str(path)
        self._threads = session.get_session_options().intra_op_num_threads  # of self.session
        self._sessions: Dict[int, Any] = {}  # further sessions of the graph, by thread count
        self._lock = threading.Lock()
        self.min_size, self.max_size = int(min_size), int(max_size)
        self.class_names = list(class_names)

    def forward(self, batch: List[dict]) -> List[Dict[str, Tensor]]:
        return [self._predict(sample) for sample in batch]

    def _session(self):
        """The session for the calling thread's thread setting (``session_threads``): the one
        built with the predictor, or another session of the same graph made once per thread count
        (``ParallelImages`` runs images side by side with one thread each)."""
        threads = session_threads()
        if threads == self._threads:
            return self.session
        with self._lock:
            if threads not in self._sessions:
                self._sessions[threads] = ort_session(self.path, threads=threads)
            return self._sessions[threads]

    def _predict(self, sample: dict) -> Dict[str, Tensor]:
        image = self._check(sample)
        boxes, scores, labels = self._session().run(None, {"image": image.numpy()})
        boxes = torch.from_numpy(boxes)
        h, w = image.shape[-2:]
        height, width = int(sample.get("height", h)), int(sample.get("width", w))
        if (height, width) != (h, w):  # the record's size is the one the eager model maps to
            boxes = boxes * torch.tensor([width / w, height / h] * 2, dtype=torch.float32)
        return {
            "boxes": boxes,
            "scores": torch.from_numpy(scores),
            "labels": torch.from_numpy(labels),
        }

    def _check(self, sample: dict) -> Tensor:
        """The sample's image, contiguous on the CPU, after checking that the graph's resize is the
        one the sample asks for (multi-scale passes or pre-resized images would differ)."""
        image = sample["image"]
        where = f"image {sample.get('image_id', '?')}"
        if not isinstance(image, Tensor) or image.dtype != torch.uint8 or image.dim() != 3:
            raise BackendError(
                f"{where}: backend onnxruntime takes the original image as a uint8 (3, H, W) "
                f"tensor; got {type(image).__name__} {getattr(image, 'dtype', '')} "
                f"{tuple(getattr(image, 'shape', ()))}"
            )
        h, w = image.shape[-2:]
        size = resize_size(h, w, self.min_size, self.max_size, "floor")
        asked = sample.get("size")
        wrong = asked is None and sample.get("scale") is None
        wrong |= asked is not None and tuple(int(v) for v in asked) != size
        scale = sample.get("scale")
        wrong |= scale is not None and float(scale) != resize_scale(
            h, w, self.min_size, self.max_size
        )
        if wrong:
            raise BackendError(
                f"{where}: the onnxruntime graph resizes the original {h}x{w} image to {size} "
                f"(input.min_size_test={self.min_size}, input.max_size_test={self.max_size}); the "
                f"sample asks for size={asked}, scale={scale}. Build samples with Detector.sample "
                "or InferenceMapper at the config's test size, or use backend eager"
            )
        return image.cpu().contiguous()


# ---------------------------------------------------------------------------------------------
# sessions


@functools.lru_cache(maxsize=None)
def _log_threads(threads: int) -> None:
    logger.info("onnxruntime session: %d intra-op thread(s), full graph optimisation", threads)


def session_threads() -> int:
    """onnxruntime's intra-op threads for a session made now: the physical cores, or fewer when
    torch's thread setting (of this thread: ``ParallelImages`` workers use fewer) asks for fewer."""
    return max(1, min(physical_cores(), torch.get_num_threads()))


def ort_session(
    model: Union[str, os.PathLike, bytes],
    providers: Optional[List[str]] = None,
    threads: Optional[int] = None,
):
    """An onnxruntime session for an ONNX file or its bytes: ORT_ENABLE_ALL, sequential execution,
    one intra-op thread per physical core (fewer when torch.set_num_threads asked for fewer: one
    thread setting for both backends), threads that sleep when idle."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or session_threads()
    # idle threads sleep instead of spinning (as OMP_WAIT_POLICY=PASSIVE for torch): measured on 2
    # cores, ~6% slower on an idle machine, ~40% faster beside one other busy process
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: unused-initializer notices are not actionable
    _log_threads(options.intra_op_num_threads)
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(
        source, sess_options=options, providers=providers or ["CPUExecutionProvider"]
    )


# ---------------------------------------------------------------------------------------------
# the graph cache


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

    import detkit

    source = hashlib.sha256()
    package = Path(detkit.__file__).parent
    for path in sorted(package.rglob("*.py")):  # the traced code: a change re-exports
        source.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "detkit": detkit.__version__,
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
