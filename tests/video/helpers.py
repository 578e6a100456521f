"""Fake video inputs and the reference video for the video tests (shared helpers: tests/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from tests.helpers import reference_data

# mmcv's test.mp4: 168 frames, 294x240, 25 fps
TEST_MP4 = ("mmcv", "tests", "data", "test.mp4")
# fewer proposals and a smaller input: the 168-frame video test runs the real model on every frame
FAST = [
    "input.min_size_test=64",
    "input.max_size_test=128",
    "model.rpn.pre_nms_topk_test=200",
    "model.rpn.post_nms_topk_test=50",
]


def reference_video() -> Path:
    return reference_data(*TEST_MP4)


def count_video_frames(path) -> int:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"cv2 cannot open {path}"
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def fake_infer(images):
    """One detection per frame, label 1 at a fixed box, and one low-scoring label 0."""
    return [
        {
            "boxes": np.array([[10, 12, 60, 70], [0, 0, 5, 5]], np.float32),
            "scores": np.array([0.9, 0.1], np.float32),
            "labels": np.array([1, 0], np.int64),
        }
        for _ in images
    ]


class FakeCapture:
    """A cv2.VideoCapture stand-in: ``frames`` BGR arrays; reads at indices in ``fail_at`` fail once
    (a corrupt frame); ``live`` hides the frame count like a camera."""

    def __init__(self, num_frames=10, size=(64, 48), fps=30.0, fail_at=(), live=False, opened=True):
        self.frames = [
            np.full((size[1], size[0], 3), 10 * i % 255, np.uint8) for i in range(num_frames)
        ]
        self.fps, self.fail_at, self.live, self.opened = fps, set(fail_at), live, opened
        self.pos, self.released, self.size = 0, False, size

    def isOpened(self):
        return self.opened

    def get(self, prop):
        return {
            cv2.CAP_PROP_FPS: self.fps,
            cv2.CAP_PROP_FRAME_COUNT: 0 if self.live else len(self.frames),
            cv2.CAP_PROP_FRAME_WIDTH: self.size[0],
            cv2.CAP_PROP_FRAME_HEIGHT: self.size[1],
        }.get(prop, 0)

    def grab(self):
        ok = self.pos < len(self.frames) and self.pos not in self.fail_at
        self.pos += 1
        return ok

    def read(self):
        i = self.pos
        if not self.grab():
            return False, None
        return True, self.frames[i].copy()

    def release(self):
        self.released = True
