"""Tiny models and training samples for the model tests (plain functions; shared by
test_detector.py, test_precision.py and test_refine.py)."""

import torch

from detkit.modeling import build_model
from tests.helpers import TINY_FPN, tiny_config


def tiny(overrides=(), base=TINY_FPN):
    """The tiny model (``base``: TINY_FPN or TINY_C4) with ``overrides``, seeded."""
    torch.manual_seed(0)
    return build_model(tiny_config(*overrides, base=base))


def sample(boxes=((20.0, 24.0, 60.0, 70.0),), labels=(1,), size=(96, 128), seed=0):
    """A training sample: a random uint8 image of ``size`` with ground-truth boxes and labels."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 255, (3, *size), generator=g, dtype=torch.uint8)
    return {
        "image": img,
        "height": size[0],
        "width": size[1],
        "image_id": seed,
        "gt_boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "gt_labels": torch.tensor(labels, dtype=torch.int64),
    }
