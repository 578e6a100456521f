"""The one onnxruntime runner: an exported ONNX graph behind the eager predictor's interface.

``OnnxRuntimePredictor`` takes a list of inference samples (the ORIGINAL uint8 image plus
"size"/"scale", docs/architecture.md) and returns one dict of torch tensors {"boxes" (N, 4) original
pixels, "scores", "labels" 0-based} per image, as the eager predictor does. The graph runs on the
CPU in float32, one pass at input.min_size_test / input.max_size_test with floor rounding and the
tensor bilinear resize (``limits``); a sample asking for another size is refused. The backend that
builds it from a model (``detkit.inference.backends``) finds or exports the graph in ``graph_cache``.

Sessions (``ort_session``) use full graph optimisation, sequential execution and as many intra-op
threads as the machine has physical cores (hyper-threads share a core's vector units), fewer when
torch's thread setting of the calling thread asks for fewer. Needs the optional extra
``pip install 'detkit[export]'``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
from torch import Tensor, nn

from detkit.errors import BackendError

from ..structures.resize import resize_scale, resize_size
from ..utils.threads import physical_cores

logger = logging.getLogger("detkit")


class OnnxRuntimePredictor(nn.Module):
    """The exported graph behind the eager predictor's interface: ``predictor(samples)`` -> one
    {"boxes", "scores", "labels"} dict of CPU tensors per sample. A module without parameters, so
    that .eval()/.train() work where the eager predictor's do; the graph has no training mode.

    The one onnxruntime runner: the backend builds it from its cached graph, ``tools/export.py
    --check`` from an exported file (:meth:`open`)."""

    backend = "onnxruntime"

    def __init__(self, session, path: Union[str, Path], *, min_size, max_size, class_names):
        super().__init__()
        self.session, self.path = session, str(path)
        self._threads = session.get_session_options().intra_op_num_threads  # of self.session
        self._sessions: Dict[int, Any] = {}  # further sessions of the graph, by thread count
        self._lock = threading.Lock()
        self.min_size, self.max_size = int(min_size), int(max_size)
        self.class_names = list(class_names)

    @classmethod
    def open(
        cls, path: Union[str, Path], *, min_size: int, max_size: int
    ) -> "OnnxRuntimePredictor":
        """The runner of an exported ONNX file (class names from its metadata); ``min_size`` /
        ``max_size``: the test sizes it was exported with (input.min_size_test / max_size_test)."""
        if not os.path.isfile(path):
            raise BackendError(f"ONNX model not found: {path}")
        session = ort_session(path)
        names = json.loads(session.get_modelmeta().custom_metadata_map.get("class_names", "[]"))
        return cls(session, path, min_size=min_size, max_size=max_size, class_names=names)

    def sessions_by_threads(self) -> Dict[int, Any]:
        """The sessions made besides :attr:`session`, by their intra-op thread count (one per
        thread setting a caller ran under, e.g. ``ParallelImages``' workers)."""
        with self._lock:
            return dict(self._sessions)

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
    # idle threads sleep instead of spinning (as OMP_WAIT_POLICY=PASSIVE for torch): a little slower
    # on an idle machine, much faster beside another busy process (docs/benchmarks.md)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: unused-initializer notices are not actionable
    _log_threads(options.intra_op_num_threads)
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(
        source, sess_options=options, providers=providers or ["CPUExecutionProvider"]
    )
