"""Compare an exported model's detections with the PyTorch model's (the parity criterion).

A PyTorch detection is matched when the exported model has a detection with the same label,
IoU >= 0.99 and |score difference| <= 1e-3; the export passes when >= 99% are matched.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

logger = logging.getLogger("detkit")


def match_fraction(
    ref: Dict, out: Dict, iou_thresh: float = 0.99, score_tol: float = 1e-3
) -> float:
    """Fraction of ``ref``'s detections matched in ``out`` (1.0 when both are empty, 0.0 when only
    ``out`` has detections: extra detections are a mismatch too)."""
    rb, rs, rl = (torch.as_tensor(np.asarray(ref[k])) for k in ("boxes", "scores", "labels"))
    ob, os_, ol = (torch.as_tensor(np.asarray(out[k])) for k in ("boxes", "scores", "labels"))
    if len(rb) == 0:
        return 1.0 if len(ob) == 0 else 0.0
    if len(ob) == 0:
        return 0.0
    ok = (
        (box_iou(rb.float().reshape(-1, 4), ob.float().reshape(-1, 4)) >= iou_thresh)
        & (rl.long()[:, None] == ol.long()[None])
        & ((rs.float()[:, None] - os_.float()[None]).abs() <= score_tol)
    )
    return ok.any(dim=1).float().mean().item()


def default_check_images() -> List[np.ndarray]:
    """Two RGB images of different sizes and aspect ratios (smooth, so the features are not noise)."""
    images = []
    for h, w, seed in ((240, 320, 0), (333, 211, 1)):
        rng = np.random.default_rng(seed)
        base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        import cv2

        images.append(cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC))
    return images


def run_exported(path: str, fmt: str):
    """A function RGB HxWx3 -> detection dict for an exported file."""
    if fmt == "onnx":
        from .exporters import OnnxDetector

        return OnnxDetector(path)
    from .exporters import load_torchscript

    module, _ = load_torchscript(path)

    def run(image: np.ndarray):
        with torch.no_grad():
            b, s, l = module(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))))
        return {"boxes": b.numpy(), "scores": s.numpy(), "labels": l.numpy()}

    return run


def check_export(det, path: str, fmt: str, images: Optional[Sequence[np.ndarray]] = None) -> float:
    """The smallest match fraction over ``images`` (default: two sizes); logs each image's numbers."""
    run = run_exported(path, fmt)
    worst = 1.0
    for image in images if images is not None else default_check_images():
        with torch.no_grad():
            ref = det.model([det.sample(image)])[0]
        out = run(image)
        fraction = match_fraction({k: v.cpu() for k, v in ref.items()}, out)
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
