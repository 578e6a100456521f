"""Which of detkit's configs a weights file fits: the hint of the "does not fit" error.

A file that does not fit the chosen config usually fits another known one (the FPN file given to
a C4 config, a torchvision v2 file to the v1 config, 20 VOC classes to an 80-class config). The
candidates are found by building each config's model on the ``meta`` device (no memory, no
initialisation) and comparing its tensor names and shapes with the file's, so
the hint follows the configs as they are, not a table kept beside them. This runs only when
loading has already failed.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from detkit.config import load_config
from detkit.modeling.build import build_model

logger = logging.getLogger("detkit")

CONFIG_ROOT = Path(__file__).resolve().parents[2] / "configs"
_PREDICTOR = "roi_heads.predictor.cls_score.bias"

Shapes = Dict[str, Tuple[int, ...]]


@functools.lru_cache(maxsize=None)
def _config_shapes(path: Path, mtime: float) -> Optional[Shapes]:
    # cached per file version: the error path of a long session (tests, a notebook) scans once
    try:
        cfg = load_config(path, ["model.backbone.weights="])
        with torch.device("meta"):
            model = build_model(cfg)
    except Exception as e:  # a config that does not build is no candidate; say so for debugging
        logger.debug("config %s skipped while matching a checkpoint: %s", path, e)
        return None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _num_classes(shapes: Shapes) -> Optional[int]:
    return shapes[_PREDICTOR][0] - 1 if _PREDICTOR in shapes else None


def _fits(file: Shapes, model: Shapes) -> Optional[str]:
    """'' when every tensor fits, the num_classes override when only the class count differs,
    None otherwise."""
    if file.keys() != model.keys():
        return None
    differ = [k for k in file if file[k] != model[k]]
    if not differ:
        return ""
    if all(k.startswith("roi_heads.predictor.") for k in differ):
        return f" model.num_classes={_num_classes(file)}"
    return None


def configs_fitting(file: Shapes, source: str = "") -> List[str]:
    """Configs under ``configs/`` (``_base_`` excluded) whose model takes exactly the file's
    tensors, each followed by the ``model.num_classes`` override it needs, if any. A file converted
    from detectron2 or torchvision (``source`` names the framework) is matched against that
    framework's folder first: the same tensors can come with another preprocessing."""
    # not a detector (no box predictor), or an installed package without the repository's configs
    if _PREDICTOR not in file or not CONFIG_ROOT.is_dir():
        return []
    paths = sorted(p for p in CONFIG_ROOT.rglob("*.yaml") if "_base_" not in p.parts)
    framework = source.split(":", 1)[0].split("-", 1)[0]
    preferred = [p for p in paths if framework and p.parent.name == framework]
    for group in (preferred, [p for p in paths if p not in preferred]):
        found = []
        for p in group:
            shapes = _config_shapes(p, p.stat().st_mtime)
            extra = _fits(file, shapes) if shapes is not None else None
            if extra is not None:
                found.append(f"{p.relative_to(CONFIG_ROOT.parent)}{extra}")
        if found:
            return found
    return []


def describe_foreign(keys) -> str:
    """A hint when the names are not detkit's at all (a file to convert, or a backbone)."""
    keys = list(keys)
    if any(k.startswith("backbone.body.") for k in keys):
        return (
            "its names are torchvision's (backbone.body.*): convert it with tools/convert_weights.py "
            "--from torchvision --config configs/torchvision/<model>.yaml"
        )
    if any(k.startswith(("layer1.", "conv1.")) for k in keys):
        return (
            "it is an ImageNet backbone (conv1.*, layer1.* ...), not a detector: give it as "
            "model.backbone.weights"
        )
    return ""
