"""Outputs of a video run: the annotated video (or images) and the JSON-lines detections.

JSON-lines schema, one object per processed frame, in frame order::

    {"frame": 12,                 # index of the frame in the source (0-based; counts skipped frames)
     "timestamp": 0.48,           # seconds from the start: frame / fps for videos, wall-clock time
                                  # for cameras, null for image files
     "file": "a/b.jpg",           # image sources only: the image's path
     "width": 294, "height": 240, # size of the frame, the pixel space of the boxes
     "boxes": [[x1, y1, x2, y2], ...],   # XYXY, original-frame pixels, 2 decimals
     "scores": [0.91, ...],       # 4 decimals, descending
     "labels": [0, ...],          # 0-based class index
     "names": ["person", ...]}    # class names of the labels

A corrupt frame that was skipped has no record. The file is flushed after every record, so it is
complete up to the last written frame even when the run is interrupted.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Dict, Optional, Sequence

import cv2
import numpy as np

from detkit.errors import WriteError

logger = logging.getLogger("detkit")


def make_record(frame, detections: Dict[str, np.ndarray], class_names: Sequence[str]) -> dict:
    """The JSON-lines record of one frame (see the module docstring)."""
    h, w = frame.image.shape[:2]
    labels = [int(x) for x in detections["labels"]]
    record = {
        "frame": int(frame.index),
        "timestamp": None if frame.timestamp is None else round(float(frame.timestamp), 6),
    }
    if frame.name is not None:
        record["file"] = str(frame.name)
    record.update(
        {
            "width": int(w),
            "height": int(h),
            "boxes": [
                [round(float(v), 2) for v in box]
                for box in np.asarray(detections["boxes"]).reshape(-1, 4)
            ],
            "scores": [round(float(s), 4) for s in detections["scores"]],
            "labels": labels,
            "names": [class_names[i] if 0 <= i < len(class_names) else str(i) for i in labels],
        }
    )
    return record


def _make_parent(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise WriteError(f"cannot create the output folder {parent}: {e}") from None


class JsonLinesWriter:
    def __init__(self, path: str):
        _make_parent(path)
        try:
            self._file = open(path, "w", encoding="utf-8")
        except OSError as e:
            raise WriteError(f"cannot write detections to {path}: {e}") from None
        self.path, self.count = path, 0

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()
        self.count += 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class VideoFileWriter:
    """An mp4 (codec mp4v) at the source's frame rate; opened at the first frame, so the video has
    the frames' size. ``close`` finalises the container: the file plays up to the last frame."""

    def __init__(self, path: str, fps: float, fourcc: str = "mp4v"):
        _make_parent(path)
        self.path, self.fps, self.fourcc = path, float(fps), fourcc
        self._writer: Optional[cv2.VideoWriter] = None
        self.size = None
        self.count = 0

    def write(self, rgb: np.ndarray, name: Optional[str] = None) -> None:
        h, w = rgb.shape[:2]
        if self._writer is None:
            self._writer = cv2.VideoWriter(
                self.path, cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (w, h)
            )
            if not self._writer.isOpened():
                raise WriteError(
                    f"cannot write video {self.path} (codec {self.fourcc}, {w}x{h} at {self.fps} fps)"
                )
            self.size = (w, h)
        elif (
            w,
            h,
        ) != self.size:  # a video's frames share one size; resize the odd one rather than drop it
            rgb = cv2.resize(rgb, self.size, interpolation=cv2.INTER_AREA)
        self._writer.write(np.ascontiguousarray(rgb[:, :, ::-1]))
        self.count += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class ImageFileWriter:
    """The one annotated image of a one-image input, written to the path the user named."""

    def __init__(self, path: str):
        folder = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise WriteError(f"cannot create the output folder {folder}: {e}") from None
        self.path, self.count = path, 0

    def write(self, rgb: np.ndarray, name: Optional[str] = None) -> None:
        if not cv2.imwrite(self.path, np.ascontiguousarray(rgb[:, :, ::-1])):
            raise WriteError(f"cannot write image {self.path}")
        self.count += 1

    def close(self) -> None:
        pass


class ImageFolderWriter:
    """Annotated images under their source file names (a numbered name when two sources share one)."""

    def __init__(self, folder: str):
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise WriteError(f"cannot create the output folder {folder}: {e}") from None
        self.folder, self.count, self._used = folder, 0, set()

    def write(self, rgb: np.ndarray, name: Optional[str] = None) -> None:
        base = os.path.basename(name) if name else f"{self.count:06d}.jpg"
        stem, ext = os.path.splitext(base)
        if ext.lower() not in IMAGE_EXTENSIONS:
            ext = ".png"  # gif and other formats cv2 cannot write
        out = stem + ext
        if out in self._used:
            out = f"{stem}_{self.count:06d}{ext}"
        self._used.add(out)
        path = os.path.join(self.folder, out)
        if not cv2.imwrite(path, np.ascontiguousarray(rgb[:, :, ::-1])):
            raise WriteError(f"cannot write image {path}")
        self.count += 1

    def close(self) -> None:
        pass
