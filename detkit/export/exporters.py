"""Export a detkit detector to TorchScript or ONNX (see ``traceable`` for the graph's inputs/outputs).

Both formats are traced from ``ExportableDetector`` (the eager model's own ``predict``) with one
example image; every size-dependent value is computed from the input's shape inside the graph, so
the file accepts any image size, and ``_trace`` fails the export if one got frozen.

- TorchScript: ``torch.jit.load(path)(image_uint8_chw) -> (boxes, scores, labels)``; the file uses
  torchvision's ``nms``/``roi_align``/``roi_pool`` operators, so ``import torchvision`` before loading.
  It is traced on the CPU and runs on the CPU (tracing records devices as constants).
- ONNX (opset >= 16, default 17): input ``image`` uint8 [3, height, width]; outputs ``boxes``
  float32 [N, 4], ``scores`` float32 [N], ``labels`` int64 [N]. Runs in onnxruntime (CPU or GPU);
  needs the optional extra ``pip install detkit[export]`` (onnx, onnxruntime) only to export/check.

A config asking for what the graph does not compute (``limits``: test-time augmentation, bf16/fp16,
refinement, detectron2's resize conventions) is refused, as the onnxruntime backend refuses it.

Both writers are atomic (``detkit.utils.io``): a failed export leaves no file. ``graph_module`` and
``onnx_bytes`` are the pieces ``graph_cache`` (the onnxruntime backend's graph) exports with, from a
model and its config rather than a ``Detector``; ``runtime.OnnxRuntimePredictor`` runs the file.

Class names are stored with the file: in TorchScript as the ``class_names`` attribute (a list of
strings, also in the ``extra_files`` entry ``class_names.json``), in ONNX as the metadata entry
``class_names`` (a JSON list).
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import warnings
from typing import Dict, List, Optional, Tuple

import torch

from detkit.errors import BackendError

from ..utils.io import atomic_open, atomic_write_bytes
from .limits import refuse_unless_graph_runs
from .traceable import ExportableDetector

logger = logging.getLogger("detkit")
FORMATS = ("torchscript", "onnx")
# RoIAlign's coordinate_transformation_mode (aligned=True/False) exists from opset 16
MIN_OPSET = 16


def exportable(det) -> ExportableDetector:
    """The export graph of a ``Detector`` (its model on the CPU, its config's test sizes); tracing
    changes nothing in the model, and a model on another device is copied: ``det`` stays as it is."""
    model = det.model if det.device.type == "cpu" else copy.deepcopy(det.model).cpu()
    return graph_module(model, det.cfg)


def graph_module(model, cfg) -> ExportableDetector:
    """The export graph of a CPU ``model`` built from ``cfg`` (one pass at input.min_size_test);
    a config asking for what the graph lacks (``limits.graph_problems``) is refused."""
    refuse_unless_graph_runs(cfg, "the export", "run the model in PyTorch (backend eager)")
    model.eval()
    return ExportableDetector(
        model, min_size=cfg.input.min_size_test, max_size=cfg.input.max_size_test
    ).eval()


def example_image(height: int = 240, width: int = 320, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8)


def _trace(module: ExportableDetector, image: torch.Tensor):
    """Trace, and turn warnings that a value computed in detkit's code was frozen into the graph into
    errors. (torch's own sanity checks, e.g. GroupNorm's batch-size check, warn too; those are harmless.)"""
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always", torch.jit.TracerWarning)
        warnings.simplefilter(
            "ignore", FutureWarning
        )  # "torch.jit.trace is deprecated": chosen on purpose
        traced = torch.jit.trace(module, (image,), check_trace=False)
    tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    ours = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frozen = [
        f"{w.filename}:{w.lineno}: {w.message}"
        for w in tracer
        if os.path.abspath(w.filename).startswith(ours)
    ]
    for w in tracer:
        logger.debug("tracer warning %s:%s: %s", w.filename, w.lineno, w.message)
    if frozen:
        raise BackendError(
            "tracing froze input-dependent values into the graph; the export would only work for "
            f"one image size: {frozen[:3]}"
        )
    return traced


def export_torchscript(det, path: str, example: Optional[torch.Tensor] = None) -> str:
    module = exportable(det)
    traced = _trace(module, example if example is not None else example_image())
    names = json.dumps(module.class_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.save is deprecated"
        with atomic_open(path, "wb") as f:
            torch.jit.save(traced, f, _extra_files={"class_names.json": names})
    logger.info(
        "wrote TorchScript model %s (input: uint8 (3, H, W) RGB; outputs: boxes, scores, labels)",
        path,
    )
    return path


def load_torchscript(path: str) -> Tuple[torch.jit.ScriptModule, List[str]]:
    import torchvision  # noqa: F401  (registers the nms / roi_align operators the file uses)

    extra = {"class_names.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
        module = torch.jit.load(path, map_location="cpu", _extra_files=extra)
    return module, json.loads(extra["class_names.json"] or "[]")


def export_onnx(det, path: str, opset: int = 17, example: Optional[torch.Tensor] = None) -> str:
    """Write ``det``'s graph as an ONNX file (atomically: a failed export leaves no file)."""
    atomic_write_bytes(onnx_bytes(exportable(det), opset=opset, example=example), path)
    logger.info(
        "wrote ONNX model %s (opset %d; input 'image' uint8 [3, height, width] RGB; outputs boxes, scores, "
        "labels)",
        path,
        opset,
    )
    return path


def onnx_bytes(
    module: ExportableDetector,
    opset: int = 17,
    example: Optional[torch.Tensor] = None,
    metadata: Optional[Dict[str, str]] = None,
) -> bytes:
    """The serialised, checked ONNX model of ``module``; its metadata holds ``class_names`` (a JSON
    list) and the entries of ``metadata``."""
    if opset < MIN_OPSET:
        raise BackendError(
            f"opset {opset} is too old: detkit's ONNX export needs opset >= {MIN_OPSET}"
        )
    try:
        import onnx
    except ImportError:
        raise BackendError(
            "ONNX export needs the optional extra: pip install 'detkit[export]' (onnx, onnxruntime)"
        ) from None
    import torchvision  # noqa: F401  (registers the ONNX symbolics of nms / roi_align / roi_pool)

    image = example if example is not None else example_image()
    _trace(
        module, image
    )  # fails early, with a clear message, if anything size-dependent gets frozen
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript-based exporter is chosen on purpose (torchvision registers its nms/roi_align
        # symbolics for it); its deprecation notices are not actionable for the user
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(
            module,
            (image,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=["boxes", "scores", "labels"],
            dynamic_axes={
                "image": {1: "height", 2: "width"},
                "boxes": {0: "detections"},
                "scores": {0: "detections"},
                "labels": {0: "detections"},
            },
        )
    model = onnx.load_from_string(buffer.getvalue())
    entries = {"class_names": json.dumps(module.class_names), **(metadata or {})}
    for key, value in entries.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    return model.SerializeToString()


def export(det, path: str, fmt: str, opset: int = 17) -> str:
    if fmt not in FORMATS:
        raise BackendError(f"unknown export format '{fmt}'; valid: {', '.join(FORMATS)}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if fmt == "torchscript":
        return export_torchscript(det, path)
    return export_onnx(det, path, opset=opset)
