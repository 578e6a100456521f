"""Inference backends: the eager model, or its exported ONNX graph run by onnxruntime on the CPU.

``make_predictor(model, cfg, backend)`` builds what ``Detector.predictor`` (and through it
tools/test.py, tools/video.py and the benchmark) calls: a module that takes a list of inference
samples (the ORIGINAL uint8 image plus "size"/"scale", docs/architecture.md) and returns one dict
of torch tensors {"boxes" (N, 4) original pixels, "scores", "labels" 0-based} per image.

- ``eager``: ``build_predictor`` on an inference-only copy of the model made by
  ``optimize_for_inference`` (frozen BN folded into the convolutions, channels_last on the CPU;
  test.fuse_bn / test.memory_format): everything the config asks for (test.scales / test.flip,
  test.precision, refinement, either resize convention), CPU or GPU. The caller's model is left
  as it is.
- ``onnxruntime``: the model exported once to ONNX (``detkit.export.graph_cache``: preprocessing,
  network and NMS in one graph, cached next to the weights) and run by
  ``detkit.export.runtime.OnnxRuntimePredictor``. What the graph lacks is stated once in
  ``detkit.export.limits``: ``check_backend`` refuses it, naming the key and the value to set;
  nothing is dropped silently. Needs the optional extra ``pip install 'detkit[export]'``.

On the CPU either predictor runs the images of one call side by side (``ParallelImages``,
test.parallel_images).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from detkit.errors import BackendError
from detkit.export.graph_cache import cached_graph
from detkit.export.limits import refuse_unless_graph_runs
from detkit.export.runtime import OnnxRuntimePredictor

from .parallel import ParallelImages, resolve_parallel_images
from .predictor import build_predictor, optimize_for_inference

BACKENDS = ("eager", "onnxruntime")
EXTRA = "pip install 'detkit[export]' (onnx, onnxruntime)"


def check_backend(cfg, backend: str, device: Union[str, torch.device]) -> None:
    """Raise :class:`BackendError` unless ``backend`` can run ``cfg`` on ``device`` as configured.
    Eager runs everything; onnxruntime runs on the CPU what the exported graph computes
    (``detkit.export.limits.graph_problems``, the list the export refuses too)."""
    if backend not in BACKENDS:
        raise BackendError(
            f"unknown backend '{backend}' (backend= / --backend); valid: {', '.join(BACKENDS)}"
        )
    if backend == "eager":
        return
    _require_onnxruntime()
    device = torch.device(device)
    on_cpu = (
        []
        if device.type == "cpu"
        else [f"device={device} (it runs on the CPU: use device=cpu, or backend eager on {device})"]
    )
    refuse_unless_graph_runs(
        cfg, "backend onnxruntime", "use backend eager, which runs all of it", also=on_cpu
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
    """The predictor of ``backend`` (see the module docstring); ``model`` is not changed.
    ``weights``: the file the model's tensors came from (the cached graph goes next to it);
    ``cache_dir`` overrides $DETKIT_CACHE."""
    device = next(model.parameters()).device
    check_backend(cfg, backend, device)
    images = resolve_parallel_images(cfg, device)  # checked before anything is built
    if backend == "eager":  # folded BN, channels_last on the CPU: test.fuse_bn / memory_format
        predictor = build_predictor(optimize_for_inference(model, cfg), cfg)
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
