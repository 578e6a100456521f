"""The detection pipeline over a frame source: decode -> model -> draw -> write, in three threads.

    reader thread   decodes frames into a bounded queue (the model never waits on the disk/codec)
    main thread     takes batches of frames and runs the model
    output thread   filters, draws and writes each frame (video/images + JSON lines), in order

Bounded queues keep memory flat on long videos. A corrupt frame is logged and skipped. Ctrl-C
(KeyboardInterrupt) stops decoding, lets the output thread write what the model already finished
and closes the files, so the video plays up to the last written frame.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
from tqdm import tqdm

from ..visualization import draw_detections
from .sources import Frame
from .writers import make_record

logger = logging.getLogger("detkit")
Infer = Callable[[List[np.ndarray]], List[Dict[str, np.ndarray]]]
_END = object()


@dataclass
class RunStats:
    frames: int = 0  # frames processed and written
    skipped: int = 0  # corrupt frames skipped
    interrupted: bool = False
    wall_s: float = 0.0  # whole run: decode + model + draw + write, overlapped
    model_s: float = 0.0  # time inside the model calls (main thread)
    decode_s: float = 0.0  # time decoding (reader thread)
    output_s: float = 0.0  # time drawing and writing (output thread)
    backend: str = "eager"  # what ran the model (detkit.inference.backends.BACKENDS)

    @property
    def pipeline_fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def model_fps(self) -> float:
        return self.frames / self.model_s if self.model_s > 0 else 0.0

    def summary(self) -> str:
        n = max(self.frames, 1)
        return (
            f"{self.frames} frames in {self.wall_s:.1f} s, backend {self.backend}: "
            f"{self.pipeline_fps:.2f} frames/s for the whole pipeline (decode + model + draw + "
            f"write), {self.model_fps:.2f} frames/s model only; per frame: decode "
            f"{1000 * self.decode_s / n:.1f} ms, model {1000 * self.model_s / n:.1f} ms, draw + write "
            f"{1000 * self.output_s / n:.1f} ms; {self.skipped} corrupt frame(s) skipped"
        )


class _Worker(threading.Thread):
    """A daemon thread whose exception is kept and re-raised by ``check`` in the main thread."""

    def __init__(self, name: str):
        super().__init__(name=name, daemon=True)
        self.error: Optional[BaseException] = None
        self.stop_event = threading.Event()

    def run(self) -> None:
        try:
            self.work()
        except BaseException as e:  # handed to the main thread
            self.error = e

    def work(self) -> None:
        raise NotImplementedError

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def put(self, q: queue.Queue, item) -> bool:
        """Blocking put that gives up when the thread is asked to stop."""
        while not self.stop_event.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False


class FrameReader(_Worker):
    def __init__(self, source, max_queue: int):
        super().__init__("detkit-frame-reader")
        self.source, self.queue = source, queue.Queue(maxsize=max_queue)
        self.decode_s = 0.0

    def work(self) -> None:
        it = iter(self.source)
        try:
            while not self.stop_event.is_set():
                t = time.perf_counter()
                frame = next(it, _END)
                self.decode_s += time.perf_counter() - t
                if frame is _END or not self.put(self.queue, frame):
                    break
        except BaseException as e:  # kept before the end marker goes out, so the consumer sees it
            self.error = e
        finally:
            if hasattr(it, "close"):
                it.close()  # releases a capture
            self.put(self.queue, _END)

    def batches(self, batch_size: int, on_error: Callable[[Frame], None]) -> Iterator[List[Frame]]:
        batch: List[Frame] = []
        while True:
            try:
                item = self.queue.get(timeout=0.1)
            except queue.Empty:
                self.check()
                continue
            if item is _END:
                self.check()
                break
            if item.image is None:
                on_error(item)
                continue
            batch.append(item)
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch


class OutputWriter(_Worker):
    """Draws and writes (frame, detections) pairs in order; ``finish`` drains the queue and stops."""

    def __init__(self, writer, jsonl, class_names: Sequence[str], max_queue: int):
        super().__init__("detkit-output-writer")
        self.writer, self.jsonl, self.class_names = writer, jsonl, list(class_names)
        self.queue = queue.Queue(maxsize=max_queue)
        self.output_s, self.written = 0.0, 0

    def work(self) -> None:
        while True:
            item = self.queue.get()
            if item is _END:
                return
            frame, dets = item
            t = time.perf_counter()
            if self.jsonl is not None:
                self.jsonl.write(make_record(frame, dets, self.class_names))
            if self.writer is not None:
                self.writer.write(draw_detections(frame.image, dets, self.class_names), frame.name)
            self.output_s += time.perf_counter() - t
            self.written += 1

    def submit(self, frame: Frame, dets: Dict[str, np.ndarray]) -> None:
        self._put_while_alive((frame, dets))
        self.check()

    def finish(self) -> None:
        self._put_while_alive(_END)
        self.join()
        self.check()

    def _put_while_alive(self, item) -> None:
        while self.is_alive():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue


def filter_detections(
    dets: Dict[str, np.ndarray],
    score_thresh: Union[float, np.ndarray] = 0.0,
    keep_labels: Optional[Sequence[int]] = None,
) -> Dict[str, np.ndarray]:
    """Keep detections with score >= score_thresh and (when given) a label in keep_labels.

    ``score_thresh`` is one number for every class or an array (K,) of minimum scores per label
    (``detkit.analysis.thresholds.load_thresholds``): then a detection needs score >=
    ``score_thresh[label]``."""
    scores = np.asarray(dets["scores"])
    if np.ndim(score_thresh) == 0:
        keep = scores >= score_thresh
    else:
        labels = np.asarray(dets["labels"], dtype=np.int64).reshape(-1)
        keep = scores >= np.asarray(score_thresh)[labels]
    if keep_labels is not None:
        keep &= np.isin(np.asarray(dets["labels"]), np.asarray(list(keep_labels), dtype=np.int64))
    return {
        "boxes": np.asarray(dets["boxes"]).reshape(-1, 4)[keep],
        "scores": scores[keep],
        "labels": np.asarray(dets["labels"])[keep],
    }


def run_pipeline(
    source,
    infer: Infer,
    *,
    class_names: Sequence[str],
    writer=None,
    jsonl=None,
    batch_size: int = 1,
    score_thresh: Union[float, np.ndarray] = 0.0,
    keep_labels: Optional[Sequence[int]] = None,
    progress: bool = True,
    backend: str = "eager",
) -> RunStats:
    """Detect on every frame of ``source``; returns the counts and timings (also logged).

    ``infer`` maps a list of RGB frames to one detection dict (numpy boxes/scores/labels) per frame.
    ``writer`` (a video or image-folder writer) and ``jsonl`` may be None. The writers are closed here.
    ``backend`` names what ``infer`` runs, for the stats and the final log line.
    ``score_thresh``: one minimum score, or an array (K,) of them per label (``filter_detections``).
    """
    stats = RunStats(backend=backend)
    reader = FrameReader(source, max_queue=max(4, 3 * batch_size))
    output = OutputWriter(writer, jsonl, class_names, max_queue=max(4, 3 * batch_size))
    bar = tqdm(
        total=getattr(source, "total", None),
        unit="frame",
        desc="detect",
        disable=not progress,
        dynamic_ncols=True,
    )

    def on_error(frame: Frame) -> None:
        stats.skipped += 1
        logger.warning("skipping a corrupt frame: %s", frame.error)

    start = time.perf_counter()
    reader.start()
    output.start()
    try:
        for batch in reader.batches(batch_size, on_error):
            t = time.perf_counter()
            outs = infer([f.image for f in batch])
            stats.model_s += time.perf_counter() - t
            for frame, dets in zip(batch, outs):
                output.submit(frame, filter_detections(dets, score_thresh, keep_labels))
            bar.update(len(batch))
    except KeyboardInterrupt:
        stats.interrupted = True
        logger.warning("interrupted: finishing the outputs with the frames done so far")
    finally:
        _shutdown(reader, output, writer, jsonl, bar)
    stats.frames, stats.output_s, stats.decode_s = output.written, output.output_s, reader.decode_s
    stats.wall_s = time.perf_counter() - start
    logger.info("%s%s", "(interrupted) " if stats.interrupted else "", stats.summary())
    return stats


def _shutdown(reader: FrameReader, output: OutputWriter, writer, jsonl, bar) -> None:
    """Stop decoding, write what the model finished, close the files (always, even on errors)."""
    reader.stop_event.set()
    try:
        output.finish()
    finally:
        bar.close()
        for w in (writer, jsonl):
            if w is not None:
                w.close()
        reader.join(timeout=5)
