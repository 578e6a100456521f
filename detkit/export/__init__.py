"""Export to TorchScript and ONNX, and the onnxruntime runner of the exported graph.

- ``exporters``: the file formats (one uint8 (3, H, W) RGB image of any size in, detections out);
  ``traceable``: the traced graph (the eager model's own ``predict`` behind a one-image signature).
- ``limits``: what the graph computes, stated once; the export and the onnxruntime backend both
  refuse a config asking for more.
- ``runtime``: ``OnnxRuntimePredictor``, the one onnxruntime runner (CPU, float32, one pass at the
  config's test size), and its sessions; ``graph_cache``: the backend's graph, exported once next to
  the weights and rebuilt when stale.
- ``check``: an exported file's detections against the PyTorch model's.

The backends themselves (``make_predictor``, ``check_backend``) are ``detkit.inference``'s. ONNX and
onnxruntime need the optional extra ``pip install 'detkit[export]'``.
"""

from .exporters import (
    FORMATS,
    export,
    export_onnx,
    export_torchscript,
    exportable,
    load_torchscript,
)
from .limits import graph_problems
from .runtime import OnnxRuntimePredictor
from .traceable import ExportableDetector

__all__ = [
    "FORMATS",
    "ExportableDetector",
    "OnnxRuntimePredictor",
    "export",
    "export_onnx",
    "export_torchscript",
    "exportable",
    "graph_problems",
    "load_torchscript",
]
