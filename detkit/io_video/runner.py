"""Run a ``Detector`` over a video, a camera or images and write the outputs (what tools/video.py calls).

    from detkit import Detector
    from detkit.io_video import detect_source
    det = Detector.from_checkpoint("model_final.pth", device="cuda")
    result = detect_source(det, "clip.mp4", output="out/clip_det.mp4", score_thresh=0.5)
    # or per-class operating points from the error analysis: score_thresh="thresholds.json"
    result.stats.pipeline_fps, result.stats.model_fps, result.video, result.jsonl

Inference switches of the detector's config (multi-scale, flip, precision; ``test.*``) apply
through ``Detector.predictor`` (``detkit.modeling.build.build_predictor``). Output naming: for a
video or camera, ``output`` is the annotated video (.mp4) and the detections go next to it with the
suffix ``.jsonl``; for image input, ``output`` is a folder of annotated images with
``detections.jsonl`` inside, or, for one input image, an image file name (``x.jpg``: the annotated
image, with ``x.jsonl`` beside it).
"""

from __future__ import annotations

import logging
import numbers
import os
import re
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Union

import cv2
import numpy as np
import torch

from detkit.analysis.thresholds import ThresholdSource, load_thresholds
from detkit.errors import ConfigError

from .pipeline import Infer, RunStats, run_pipeline
from .sources import CaptureSource, open_source
from .writers import (
    IMAGE_EXTENSIONS,
    ImageFileWriter,
    ImageFolderWriter,
    JsonLinesWriter,
    VideoFileWriter,
)

logger = logging.getLogger("detkit")
DEFAULT_SCORE_THRESH = 0.5  # detect_source's and tools/video.py's minimum score


@dataclass
class RunResult:
    stats: RunStats
    video: Optional[str]  # the annotated video file or image folder (None with no_video)
    jsonl: str


def detector_infer(det, predictor: Optional[torch.nn.Module] = None) -> Infer:
    """A batch function RGB frames -> numpy detections, through the config's test-time predictor."""
    predictor = predictor if predictor is not None else det.predictor
    predictor.eval()
    cuda = det.device.type == "cuda"

    @torch.no_grad()
    def infer(images: List[np.ndarray]):
        outs = predictor([det.sample(im) for im in images])
        if cuda:
            torch.cuda.synchronize(det.device)  # so that the model time is the model's
        return [
            {
                "boxes": o["boxes"].float().cpu().numpy().reshape(-1, 4),
                "scores": o["scores"].float().cpu().numpy(),
                "labels": o["labels"].cpu().numpy().astype(np.int64),
            }
            for o in outs
        ]

    return infer


def class_indices(
    names: Optional[Sequence[str]], class_names: Sequence[str]
) -> Optional[List[int]]:
    """Label indices of the requested class names (``--classes``); an unknown name is an error."""
    if not names:
        return None
    unknown = [n for n in names if n not in class_names]
    if unknown:
        raise ConfigError(
            f"unknown class name(s) {unknown}; the model's classes are {list(class_names)}"
        )
    return [list(class_names).index(n) for n in names]


def score_thresholds(
    score_thresh: Union[ThresholdSource, np.ndarray], class_names: Sequence[str]
) -> Union[float, np.ndarray]:
    """What ``filter_detections`` takes: a number as given, an array (K,) per label checked for its
    length, a dict or thresholds file read by ``load_thresholds`` (``ConfigError`` when wrong);
    None keeps every detection (0.0)."""
    if score_thresh is None:
        return 0.0
    if isinstance(score_thresh, numbers.Real) and not isinstance(score_thresh, bool):
        return score_thresh
    if isinstance(score_thresh, np.ndarray):
        if score_thresh.shape != (len(class_names),):
            raise ConfigError(
                f"score_thresh array has shape {score_thresh.shape}; expected one threshold per "
                f"class ({len(class_names)},): {list(class_names)}"
            )
        return score_thresh
    return load_thresholds(score_thresh, class_names, base=DEFAULT_SCORE_THRESH)


def default_output(spec, is_images: bool, root: str = "output/video") -> str:
    """output/video/<name>.mp4 for videos and cameras, output/video/<name>/ for images."""
    text = str(spec).strip()
    if isinstance(spec, int) or text.isdigit():
        stem = f"camera{int(text)}"
    else:
        head = re.split(r"[*?\[]", text)[0].rstrip(
            "/\\"
        )  # a glob: the part before the first wildcard
        stem = os.path.splitext(os.path.basename(head))[0].strip(".") or "input"
    return os.path.join(root, stem if is_images else f"{stem}.mp4")


def _outputs(source, spec, output: Optional[str], no_video: bool):
    is_images = not isinstance(source, CaptureSource)
    output = output or default_output(spec, is_images)
    if output.lower().endswith(".jsonl"):
        if not no_video:
            raise ConfigError(
                f"--output {output} is a .jsonl file: add --no-video, or give a video path/folder"
            )
        return None, JsonLinesWriter(output), output
    if is_images and output.lower().endswith(IMAGE_EXTENSIONS):
        # --output x.jpg names one file: fine for one image, ambiguous for several
        if source.total != 1:
            raise ConfigError(
                f"--output {output} names one image file but the input has {source.total} images; "
                "give a folder for the annotated images"
            )
        jsonl_path = os.path.splitext(output)[0] + ".jsonl"
        writer = None if no_video else ImageFileWriter(output)
    elif is_images:
        jsonl_path = os.path.join(output, "detections.jsonl")
        writer = None if no_video else ImageFolderWriter(output)
    else:
        jsonl_path = os.path.splitext(output)[0] + ".jsonl"
        fps = source.fps / source.every  # only every N-th frame is written: keep the real duration
        writer = None if no_video else VideoFileWriter(output, fps)
    return writer, JsonLinesWriter(jsonl_path), output


def detect_source(
    det,
    spec,
    *,
    output: Optional[str] = None,
    score_thresh: Union[ThresholdSource, np.ndarray] = DEFAULT_SCORE_THRESH,
    classes: Optional[Sequence[str]] = None,
    every: int = 1,
    max_frames: Optional[int] = None,
    batch_size: int = 1,
    no_video: bool = False,
    progress: bool = True,
    capture_factory: Callable = cv2.VideoCapture,
    infer: Optional[Infer] = None,
) -> RunResult:
    """Open ``spec`` (see ``open_source``), run the detector, write the outputs; returns the stats.

    ``score_thresh``: the minimum score of a detection that is drawn and written: one number for
    every class, an array (K,) per label, or per-class operating points as a dict ``{class name:
    score}`` or the path of a thresholds file (``detkit.analysis.thresholds``; classes it gives no
    score use its ``default``, else ``DEFAULT_SCORE_THRESH``)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    keep = class_indices(classes, det.class_names)
    score_thresh = score_thresholds(score_thresh, det.class_names)
    source = open_source(
        spec,
        every=every,
        max_frames=max_frames,
        exif=bool(det.cfg.input.exif),
        capture_factory=capture_factory,
    )
    try:
        writer, jsonl, media = _outputs(source, spec, output, no_video)
    except BaseException:
        if isinstance(source, CaptureSource):
            source.capture.release()
        raise
    logger.info(
        "detecting on %s (%s frames) -> %s%s",
        getattr(source, "name", spec),
        source.total or "unknown",
        "" if writer is None else f"{media} and ",
        jsonl.path,
    )
    stats = run_pipeline(
        source,
        infer or detector_infer(det),
        class_names=det.class_names,
        writer=writer,
        jsonl=jsonl,
        batch_size=batch_size,
        score_thresh=score_thresh,
        keep_labels=keep,
        progress=progress,
        backend=det.backend,
    )
    return RunResult(stats, None if writer is None else media, jsonl.path)
