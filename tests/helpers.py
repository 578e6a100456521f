"""Plain functions and constants that several test folders share.

Test modules import from here (``from tests.helpers import ...``), never from another test module or
from a ``conftest.py``; fixtures stay in the conftest files.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# reference files from other projects (see PROVENANCE.md there); not shipped with detkit
TESTDATA = Path(os.environ.get("DETKIT_TESTDATA", ROOT.parent / "shared" / "testdata"))


def reference_data(*parts: str) -> Path:
    """A file or folder under the reference test data; the calling test is skipped, visibly, when
    it is absent."""
    path = TESTDATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference test data, not shipped (set DETKIT_TESTDATA): {path} not found")
    return path


# Tiny models: ResNet-18 GN with a 32-channel FPN, or the C4 layout (res4 features, ROIPool, res5
# head), small enough that a forward pass on a 128 px image takes milliseconds on a CPU.
TINY_FPN = [
    "model.num_classes=3",
    "model.backbone.depth=18",
    "model.backbone.norm=GN",
    "model.backbone.freeze_at=0",
    "model.neck.out_channels=32",
    "model.roi_heads.box_head.fc_dim=64",
    "model.rpn.anchor_sizes=[[16],[32],[64],[128],[256]]",
    "model.rpn.batch_size_per_image=64",
    "model.roi_heads.batch_size_per_image=64",
    "input.min_size_test=128",
    "input.max_size_test=256",
]
TINY_C4 = [
    "model.num_classes=3",
    "model.backbone.depth=18",
    "model.backbone.norm=GN",
    "model.backbone.freeze_at=0",
    "model.backbone.out_features=[res4]",
    "model.neck.name=none",
    "model.rpn.in_features=[res4]",
    "model.rpn.anchor_sizes=[[16,32,64]]",
    "model.rpn.post_nms_topk_train=256",
    "model.rpn.post_nms_topk_test=300",
    "model.roi_heads.in_features=[res4]",
    "model.roi_heads.pooler.name=ROIPool",
    "model.roi_heads.pooler.output_size=14",
    "model.roi_heads.box_head.name=Res5Head",
    "model.roi_heads.batch_size_per_image=64",
    "input.min_size_test=128",
    "input.max_size_test=256",
]
CLASS_NAMES = ["cat", "dog", "car"]
# image sizes (h, w) for the parity checks of exported graphs and backends; 97x203 makes the test
# scale 256/203 land floor(203 * scale) exactly on 256 (a float32 division gets 255)
SIZES = [(240, 320), (333, 211), (97, 203), (600, 400)]


def tiny_config(*overrides: str, base=TINY_FPN):
    """The tiny FPN (or ``base=TINY_C4``) config with ``overrides`` on top."""
    from detkit.config import load_config

    return load_config(None, list(base) + list(overrides))


def save_tiny_checkpoint(path: Path, overrides=(), base=TINY_FPN, seed: int = 0) -> Path:
    """A detkit checkpoint {"model", "config", "class_names"} of a tiny random model."""
    from detkit.modeling import build_model

    cfg = tiny_config(*overrides, base=base)
    torch.manual_seed(seed)
    model = build_model(cfg, class_names=CLASS_NAMES)
    torch.save(
        {"model": model.state_dict(), "config": cfg.to_dict(), "class_names": CLASS_NAMES}, path
    )
    return path


def error_lines(err: str) -> list:
    """The ERROR lines of a tool's stderr, after checking it printed no traceback."""
    assert "Traceback" not in err and "Caught" not in err, err[-3000:]
    return [line for line in err.splitlines() if "ERROR" in line]


def load_tool(name: str):
    """tools/<name>.py as a module, loaded by path (the tools folder is not a package)."""
    path = ROOT / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"detkit_tool_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_torch_thread():
    """Generator for an autouse fixture: run the tiny models on one intra-op thread, then restore.

    On a small shared CPU, OpenMP threads that wait for each other make a tiny model many times
    slower than one thread does."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    """An h x w x 3 uint8 image of smooth random blobs (upsampled noise): the model finds
    structure in it, unlike in white noise."""
    import cv2

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC)


def write_jpeg(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """A random-noise JPEG of ``width`` x ``height`` at ``path`` (parent folders created)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, quality=90)
    return path
