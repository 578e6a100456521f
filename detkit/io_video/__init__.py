"""Detection over videos, cameras and image folders: sources, the threaded pipeline, writers.

See ``runner.detect_source`` for the entry point and ``writers`` for the JSON-lines schema.
"""

from .pipeline import RunStats, filter_detections, run_pipeline
from .runner import RunResult, class_indices, detect_source, detector_infer
from .sources import CaptureSource, Frame, ImageSource, open_source
from .writers import ImageFolderWriter, JsonLinesWriter, VideoFileWriter, make_record

__all__ = [
    "CaptureSource",
    "Frame",
    "ImageFolderWriter",
    "ImageSource",
    "JsonLinesWriter",
    "RunResult",
    "RunStats",
    "VideoFileWriter",
    "class_indices",
    "detect_source",
    "detector_infer",
    "filter_detections",
    "make_record",
    "open_source",
    "run_pipeline",
]
