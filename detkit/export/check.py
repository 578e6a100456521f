"""Compare an exported model's detections with the PyTorch model's (``tools/export.py --check``).

The criterion is ``detkit.evaluation.parity.match_fraction``'s: a PyTorch detection is matched when
the exported model has a detection with the same label, IoU >= 0.99 and |score difference| <= 1e-3;
the export passes when >= 99% are matched. The PyTorch side is the eager model the file was
exported from, run directly.
"""

from __future__ import annotations

import logging
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..evaluation.parity import match_fraction
from .exporters import load_torchscript
from .runtime import OnnxRuntimePredictor

logger = logging.getLogger("detkit")


def default_check_images() -> List[np.ndarray]:
    """Two RGB images of different sizes and aspect ratios (smooth, so the features are not noise)."""
    import cv2

    images = []
    for h, w, seed in ((240, 320, 0), (333, 211, 1)):
        rng = np.random.default_rng(seed)
        base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        images.append(cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC))
    return images


def run_exported(det, path: str, fmt: str) -> Callable[[np.ndarray], Dict]:
    """A function RGB HxWx3 -> detection dict for the file ``path`` exported from ``det``."""
    if fmt == "onnx":
        cfg = det.cfg
        runner = OnnxRuntimePredictor.open(
            path, min_size=cfg.input.min_size_test, max_size=cfg.input.max_size_test
        )
        return lambda image: runner([det.sample(image)])[0]
    module, _ = load_torchscript(path)

    def run(image: np.ndarray):
        with torch.no_grad():
            b, s, l = module(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))))
        return {"boxes": b, "scores": s, "labels": l}

    return run


def check_export(det, path: str, fmt: str, images: Optional[Sequence[np.ndarray]] = None) -> float:
    """The smallest match fraction over ``images`` (default: two sizes); logs each image's numbers."""
    run = run_exported(det, path, fmt)
    worst = 1.0
    for image in images if images is not None else default_check_images():
        with torch.no_grad():
            ref = det.model([det.sample(image)])[0]
        out = run(image)
        fraction = match_fraction(ref, out)
        worst = min(worst, fraction)
        logger.info(
            "check %dx%d: %d PyTorch detections, %d exported, %.2f%% matched",
            image.shape[1],
            image.shape[0],
            len(ref["boxes"]),
            len(out["boxes"]),
            100 * fraction,
        )
    return worst
