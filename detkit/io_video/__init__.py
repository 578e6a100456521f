"""Detection over videos, cameras and image folders: sources, the threaded pipeline, writers.

See ``runner.detect_source`` for the entry point and ``writers`` for the JSON-lines schema.
"""

from .pipeline import RunStats, filter_detections, run_pipeline
from .runner import RunResult, UsageError, class_indices, detect_source, detector_infer
from .sources import CaptureSource, Frame, ImageSource, SourceError, open_source
from .writers import ImageFolderWriter, JsonLinesWriter, OutputError, VideoFileWriter, make_record

__all__ = [
    "CaptureSource",
    "Frame",
    "ImageFolderWriter",
    "ImageSource",
    "JsonLinesWriter",
    "OutputError",
    "RunResult",
    "RunStats",
    "SourceError",
    "UsageError",
    "VideoFileWriter",
    "class_indices",
    "detect_source",
    "detector_infer",
    "filter_detections",
    "make_record",
    "open_source",
    "run_pipeline",
]
