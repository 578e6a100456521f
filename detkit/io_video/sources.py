"""Frame sources: a video file, a camera, one image, a folder or a glob of images.

Every source is an iterable of ``Frame`` objects in order. A frame that cannot be decoded is
yielded with ``image=None`` and an ``error`` message instead of ending the run, so the pipeline can
log it and go on. ``open_source`` picks the source from what the user typed.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Union

import cv2
import numpy as np

from detkit.errors import DataError

logger = logging.getLogger("detkit")

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".gif",
    ".ppm",
    ".pgm",
)
DEFAULT_FPS = 25.0
MAX_CONSECUTIVE_FAILURES = 25  # failed reads in a row before a video is taken to have ended


@dataclass
class Frame:
    index: int  # position in the source (0-based, counts skipped frames too)
    timestamp: Optional[float]  # seconds from the start; None for image files
    image: Optional[np.ndarray]  # RGB uint8 HxWx3; None when the frame could not be decoded
    name: Optional[str] = None  # file name for image sources
    error: Optional[str] = None


class CaptureSource:
    """Frames from a ``cv2.VideoCapture``-like object (``read``, ``grab``, ``get``, ``release``).

    Video files: timestamps are ``index / fps``; a failed read before the end announced by the
    header is a corrupt frame (reported and skipped) unless reading never recovers, which means the
    file is shorter than its header says. Cameras (``live=True``): wall-clock timestamps, no total.
    """

    def __init__(
        self,
        capture,
        name: str,
        *,
        live: bool = False,
        every: int = 1,
        max_frames: Optional[int] = None,
    ):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.capture, self.name, self.live = capture, name, live
        self.every, self.max_frames = every, max_frames
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        if not math.isfinite(fps) or fps <= 0 or fps > 1000:
            logger.warning(
                "%s reports no usable frame rate (%s); assuming %.0f fps", name, fps, DEFAULT_FPS
            )
            fps = DEFAULT_FPS
        self.fps = fps
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if not live else 0
        self.frame_count = count if count > 0 else None
        self.size = (
            int(capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
            int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0),
        )

    @property
    def total(self) -> Optional[int]:
        """Frames that will be processed, when known."""
        if self.frame_count is None:
            return self.max_frames
        n = (self.frame_count + self.every - 1) // self.every
        return min(n, self.max_frames) if self.max_frames is not None else n

    def __iter__(self) -> Iterator[Frame]:
        t0, index, produced, pending = time.monotonic(), 0, 0, []
        try:
            while self.max_frames is None or produced < self.max_frames:
                wanted = index % self.every == 0
                ok, image = self._read(wanted)
                if not ok:
                    if self.frame_count is not None and index >= self.frame_count:
                        break  # the announced end (reading past it is allowed: some headers undercount)
                    pending.append(index)
                    if len(pending) >= (5 if self.live else MAX_CONSECUTIVE_FAILURES):
                        break
                else:
                    # the stream recovered: the failed reads were corrupt frames in the middle
                    yield from (self._corrupt(i) for i in pending if i % self.every == 0)
                    pending = []
                    if wanted:
                        produced += 1
                        yield Frame(
                            index, time.monotonic() - t0 if self.live else index / self.fps, image
                        )
                index += 1
            if pending:
                self._ended_early(pending[0])
        finally:
            self.capture.release()

    def _corrupt(self, i: int) -> Frame:
        error = f"frame {i} of {self.name} could not be decoded"
        return Frame(i, None if self.live else i / self.fps, None, error=error)

    def _read(self, wanted: bool):
        if not wanted:
            return bool(self.capture.grab()), None
        ok, bgr = self.capture.read()
        if not ok or bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.size == 0:
            return False, None
        return True, np.ascontiguousarray(bgr[:, :, ::-1])

    def _ended_early(self, at: int) -> None:
        if at == 0:
            raise DataError(f"cannot decode any frame of {self.name}")
        if self.live:
            logger.warning("%s stopped delivering frames at frame %d", self.name, at)
        elif self.frame_count is not None:
            logger.warning(
                "%s ended at frame %d although its header announces %d frames (truncated file?)",
                self.name,
                at,
                self.frame_count,
            )


class ImageSource:
    """Image files read with detkit's reader (RGB, EXIF orientation applied)."""

    def __init__(
        self,
        paths: List[str],
        name: str,
        *,
        every: int = 1,
        max_frames: Optional[int] = None,
        exif: bool = True,
    ):
        self.paths = paths[::every][:max_frames] if max_frames is not None else paths[::every]
        self.name, self.exif, self.every = name, exif, every
        self.fps, self.live = None, False

    @property
    def total(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[Frame]:
        from detkit.data.image_io import read_image

        for i, path in enumerate(self.paths):
            try:
                image = read_image(path, exif=self.exif)
            except OSError as e:  # DataError is an OSError
                yield Frame(i * self.every, None, None, name=path, error=str(e))
                continue
            yield Frame(i * self.every, None, image, name=path)


Source = Union[CaptureSource, ImageSource]


def is_image_file(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def open_source(
    spec: Union[str, int],
    *,
    every: int = 1,
    max_frames: Optional[int] = None,
    exif: bool = True,
    capture_factory: Callable = cv2.VideoCapture,
) -> Source:
    """A camera index (``0`` or ``"0"``), a stream URL, a glob (``"frames/*.jpg"``), a folder, an image or a
    video file."""
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        index = int(spec)
        capture = capture_factory(index)
        if not capture.isOpened():
            raise DataError(
                f"cannot open camera {index} (is it connected, and not used by another program?)"
            )
        return CaptureSource(
            capture, f"camera {index}", live=True, every=every, max_frames=max_frames
        )
    spec = os.fspath(spec)
    if "://" in spec:  # a stream (rtsp://, http://): live like a camera
        capture = capture_factory(spec)
        if not capture.isOpened():
            raise DataError(f"cannot open the stream {spec}")
        return CaptureSource(capture, spec, live=True, every=every, max_frames=max_frames)
    if any(c in spec for c in "*?["):
        paths = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        if not paths:
            raise DataError(f"no files match the pattern {spec!r}")
        return ImageSource(paths, spec, every=every, max_frames=max_frames, exif=exif)
    if os.path.isdir(spec):
        paths = sorted(os.path.join(spec, f) for f in os.listdir(spec) if is_image_file(f))
        if not paths:
            raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {spec}")
        return ImageSource(paths, spec, every=every, max_frames=max_frames, exif=exif)
    if not os.path.exists(spec):
        raise DataError(
            f"input not found: {spec} (expected a video, an image, a folder, a glob or a camera index)"
        )
    if is_image_file(spec):
        return ImageSource([spec], spec, every=1, max_frames=max_frames, exif=exif)
    return _open_video(spec, capture_factory, every, max_frames)


def _open_video(
    path: str, capture_factory: Callable, every: int, max_frames: Optional[int]
) -> CaptureSource:
    capture = capture_factory(path)
    if not capture.isOpened():
        raise DataError(
            f"cannot open video file {path}: not a video, or a codec OpenCV's FFmpeg cannot decode"
        )
    source = CaptureSource(capture, path, every=every, max_frames=max_frames)
    if source.size[0] <= 0 or source.size[1] <= 0:
        capture.release()
        raise DataError(f"cannot read video file {path}: it reports no frame size")
    return source
