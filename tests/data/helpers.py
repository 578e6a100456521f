"""Helpers shared by the data tests (imported relatively: ``from .helpers import ...``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_coco(path: Path, images, annotations, categories) -> Path:
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return path


def write_jpeg(path: Path, width: int, height: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, quality=90)
    return path


def make_cfg(train=None, val=None, **sections) -> dict:
    """A plain-dict config with the keys detkit.data.build reads (tiny sizes, no workers)."""
    cfg = {
        "input": {
            "min_size_train": [32],
            "max_size_train": 64,
            "min_size_test": 32,
            "max_size_test": 64,
            "hflip_prob": 0.5,
            "color_jitter": 0.0,
            "exif": True,
        },
        "data": {
            "root": "",
            "train": {"datasets": train or [], "filter_empty": True},
            "val": {"datasets": val or []},
            "test": {"datasets": []},
            "num_workers": 0,
            "aspect_ratio_grouping": True,
            "skip_broken_images": False,
        },
        "solver": {"ims_per_batch": 2, "seed": 42},
        "test": {"ims_per_batch": 1},
    }
    for key, value in sections.items():
        cfg[key].update(value)
    return cfg
