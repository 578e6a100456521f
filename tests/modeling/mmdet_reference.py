"""mmdetection 3.x as the reference of tests/modeling/test_mmdet_parity.py (not a test module).

``build`` makes an mmdetection Faster R-CNN from mmdet's own config file (shipped inside its wheel)
with seeded random weights that behave like a trained network's (``randomize``), no download;
``detect`` runs mmdetection's ``inference_detector`` on a BGR array (its test pipeline: cv2 resize,
normalisation, padding, model); ``save_pth`` writes the file as mmdetection's checkpoints are
(``state_dict`` + ``meta.dataset_meta.classes``). Needs mmdet, mmengine and mmcv with its compiled
ops (see ../shared/reference/mmdetection/README.md); callers skip without them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import pytest
import torch

from tests.modeling.helpers import calibrating_norms, fill_scaled


def import_mmdet():
    """mmdet with mmcv's ops, or a visible skip."""
    pytest.importorskip("mmengine", reason="the mmdetection reference needs mmengine")
    pytest.importorskip("mmcv.ops", reason="the mmdetection reference needs mmcv with its ops")
    return pytest.importorskip("mmdet", reason="the mmdetection reference needs mmdet 3.x")


def config_path(name: str) -> str:
    """mmdet's configs/faster_rcnn/<name>.py, as its wheel ships it."""
    mmdet = import_mmdet()
    path = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", "faster_rcnn")
    path = os.path.join(path, name + ".py")
    if not os.path.isfile(path):
        pytest.skip(f"mmdet's config {path} is not installed")
    return path


def build(name: str, *, min_size: int, max_size: int = 1333, rpn_proposals: Optional[int] = None):
    """An mmdetection model of config ``name`` with random weights (call ``randomize`` next), its
    test resize set to (max_size, min_size) and, when given, ``rpn_proposals`` kept after the
    RPN's NMS (test_cfg.rpn.max_per_img)."""
    import_mmdet()
    from mmdet.apis import init_detector
    from mmengine.config import Config

    cfg = Config.fromfile(config_path(name))
    cfg.model.backbone.init_cfg = None  # no ImageNet download
    shared = cfg.model.roi_head.get("shared_head")
    if shared is not None:
        shared.init_cfg = None
    for step in cfg.test_dataloader.dataset.pipeline:
        if step["type"] == "Resize":
            step["scale"] = (max_size, min_size)
    if rpn_proposals:
        cfg.model.test_cfg.rpn.max_per_img = rpn_proposals
    torch.manual_seed(0)
    return init_detector(cfg, checkpoint=None, device="cpu")


@torch.no_grad()
def randomize(model, calibration_bgr: np.ndarray, logit_std: float = 1.5, seed: int = 0) -> None:
    """Seeded weights that give many distinct detections (as the detectron2 parity test's).

    Each BatchNorm (eval mode: running statistics) takes the mean and variance of what it sees on
    a calibration photo, in forward order, so activations stay O(1); the last norm of a residual
    branch gets a small scale. The RPN's objectness and deltas and the box predictor are scaled
    from the RMS of their input: objectness logits of std ~0.5 on the calibration photo (a few on
    others; sigmoid ties at 1.0 would make the top-k arbitrary), class logits of std
    ~``logit_std`` (scores spread rather than near-ties that any rounding reorders).
    """
    g = torch.Generator().manual_seed(seed)
    norms = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    hooks = calibrating_norms(norms, "bn3", g)
    seen: Dict[str, torch.Tensor] = {}
    rpn = model.rpn_head
    head = model.roi_head.bbox_head

    def keep_input(key):
        def hook(module, inputs):  # returns None: the input goes on unchanged
            seen.setdefault(key, inputs[0].flatten(1) if key == "box" else inputs[0])

        return hook

    hooks.append(rpn.rpn_cls.register_forward_pre_hook(keep_input("rpn")))
    hooks.append(head.fc_cls.register_forward_pre_hook(keep_input("box")))
    model.eval()
    detect(model, calibration_bgr)
    for h in hooks:
        h.remove()
    fill_scaled(rpn.rpn_cls, seen["rpn"], 0.5, g)
    fill_scaled(rpn.rpn_reg, seen["rpn"], 0.2, g)
    fill_scaled(head.fc_cls, seen["box"], logit_std, g, bias_std=0.5)
    fill_scaled(head.fc_reg, seen["box"], 1.0, g)


@torch.no_grad()
def detect(model, bgr: np.ndarray) -> Dict[str, torch.Tensor]:
    """mmdetection's detections on one BGR uint8 image, in original-image pixels."""
    from mmdet.apis import inference_detector

    pred = inference_detector(model, bgr).pred_instances
    return {"boxes": pred.bboxes.float(), "scores": pred.scores.float(), "labels": pred.labels}


def save_pth(model, path: Path, half: bool = False) -> Path:
    """The model as an mmdetection 3.x checkpoint: state dict and the class names in its meta
    (``half``: float tensors as float16, as the fp16 zoo file holds them)."""
    state = {
        k: (v.half() if half and v.is_floating_point() else v)
        for k, v in model.state_dict().items()
    }
    classes = tuple(model.dataset_meta["classes"])
    torch.save({"state_dict": state, "meta": {"dataset_meta": {"classes": classes}}}, path)
    return path
