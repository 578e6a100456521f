"""Export to TorchScript and ONNX, and the onnxruntime inference backend.

- ``exporters``: the file formats (one uint8 (3, H, W) RGB image of any size in, detections out);
  ``traceable``: the traced graph (the eager model's own ``predict`` behind a one-image signature).
- ``runtime``: the backends behind ``Detector(..., backend=)``, tools/test.py and tools/video.py:
  ``eager`` (the PyTorch model, everything the config asks) and ``onnxruntime`` (the exported graph,
  cached next to the weights and rebuilt when stale, run by onnxruntime on the CPU: float32, one
  pass at the config's test size; ``check_backend`` refuses what the graph lacks).

ONNX and the onnxruntime backend need the optional extra ``pip install 'detkit[export]'``.
"""

from .exporters import (
    FORMATS,
    OnnxDetector,
    export,
    export_onnx,
    export_torchscript,
    exportable,
    load_torchscript,
)
from .runtime import BACKENDS, OnnxRuntimePredictor, check_backend, make_predictor
from .traceable import ExportableDetector

__all__ = [
    "BACKENDS",
    "FORMATS",
    "ExportableDetector",
    "OnnxDetector",
    "OnnxRuntimePredictor",
    "check_backend",
    "export",
    "export_onnx",
    "export_torchscript",
    "exportable",
    "load_torchscript",
    "make_predictor",
]
