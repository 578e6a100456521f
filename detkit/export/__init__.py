"""Export to TorchScript and ONNX: one uint8 (3, H, W) RGB image of any size in, detections out.

See ``exporters`` for the file formats and ``traceable`` for the graph. ONNX needs the optional
extra ``pip install detkit[export]``.
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
from .traceable import ExportableDetector, ExportError

__all__ = [
    "FORMATS",
    "ExportError",
    "ExportableDetector",
    "OnnxDetector",
    "export",
    "export_onnx",
    "export_torchscript",
    "exportable",
    "load_torchscript",
]
