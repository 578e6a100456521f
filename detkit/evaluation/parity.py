"""The parity criterion: how closely one detector's detections reproduce another's on one image.

A reference detection is matched when the other side has a detection with the same label, IoU >=
``iou_thresh`` (or, with ``corner_tol``, every coordinate within that many pixels) and a score within
``score_tol``. The export's ``--check`` (exported file against
the PyTorch model) and the parity tests (detkit against torchvision, detectron2, its own fast path
and backends) all use this one function, each with the fraction it requires.
"""

from __future__ import annotations

from typing import Dict

import numpy as np
import torch
from torchvision.ops import box_iou


def _tensors(detections: Dict) -> tuple:
    return tuple(
        v.detach().cpu() if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))
        for v in (detections[k] for k in ("boxes", "scores", "labels"))
    )


def match_fraction(
    ref: Dict, out: Dict, iou_thresh: float = 0.99, score_tol: float = 1e-3, corner_tol: float = 0.0
) -> float:
    """Fraction of ``ref``'s detections matched in ``out`` (dicts of "boxes" (N, 4) XYXY, "scores",
    "labels"; tensors or arrays). 1.0 when both are empty, 0.0 when only ``out`` has detections:
    extra detections are a mismatch too. Labels are compared as they are: a reference with another
    label convention (torchvision's background 0) is shifted by the caller.

    ``corner_tol`` (pixels, 0 = off) also accepts a box whose corners all lie that close to the
    reference's: on a long, thin box a sub-pixel shift from float rounding alone drops IoU below
    0.99, which says nothing about the detector."""
    rb, rs, rl = _tensors(ref)
    ob, os_, ol = _tensors(out)
    if len(rb) == 0:
        return 1.0 if len(ob) == 0 else 0.0
    if len(ob) == 0:
        return 0.0
    rb, ob = rb.float().reshape(-1, 4), ob.float().reshape(-1, 4)
    placed = box_iou(rb, ob) >= iou_thresh
    if corner_tol > 0:
        placed |= (rb[:, None] - ob[None]).abs().amax(dim=-1) <= corner_tol
    ok = (
        placed
        & (rl.long()[:, None] == ol.long()[None])
        & ((rs.float()[:, None] - os_.float()[None]).abs() <= score_tol)
    )
    return ok.any(dim=1).float().mean().item()
