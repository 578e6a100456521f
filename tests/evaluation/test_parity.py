"""The parity criterion on hand-made detections."""

import torch

from detkit.evaluation.parity import match_fraction


def dets(boxes, scores, labels):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "scores": torch.tensor(scores),
        "labels": torch.tensor(labels),
    }


def test_label_iou_and_score_must_all_agree():
    ref = dets([[0, 0, 100, 100], [0, 0, 50, 50]], [0.9, 0.8], [1, 2])
    # the first is matched (IoU 0.995 >= 0.99); the second has another label
    out = dets([[0, 0, 100, 100.5], [0, 0, 50, 50]], [0.9005, 0.8], [1, 3])
    assert match_fraction(ref, out) == 0.5
    # a score 2e-3 away is not matched at the default tolerance
    assert match_fraction(ref, dets([[0, 0, 100, 100]], [0.902], [1])) == 0.0


def test_empty_sides():
    empty = dets(torch.zeros(0, 4).tolist(), [], [])
    assert match_fraction(empty, empty) == 1.0
    assert match_fraction(empty, dets([[0, 0, 1, 1]], [0.5], [0])) == 0.0
    assert match_fraction(dets([[0, 0, 1, 1]], [0.5], [0]), empty) == 0.0


def test_corner_tolerance_for_thin_boxes():
    # 1800 x 10 px moved down by 0.08 px: IoU = 9.92 / 10.08 = 0.984 < 0.99
    ref = dets([[0, 923.0, 1800, 933.0]], [0.78], [4])
    out = dets([[0, 923.08, 1800, 933.08]], [0.78], [4])
    assert match_fraction(ref, out) == 0.0
    assert match_fraction(ref, out, corner_tol=0.1) == 1.0
    assert match_fraction(ref, out, corner_tol=0.05) == 0.0
