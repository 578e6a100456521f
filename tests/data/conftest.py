"""Fixtures for the data tests."""

from __future__ import annotations

import pytest

from .helpers import write_coco, write_jpeg


@pytest.fixture
def tiny_coco(tmp_path):
    """A 3-image COCO dataset on disk: a landscape, a portrait and an empty image; one crowd box.

    Category ids 7 (dog) and 3 (cat) are deliberately out of order: labels follow sorted ids (cat=0, dog=1).
    """
    img_dir = tmp_path / "images"
    sizes = [(64, 48), (40, 80), (50, 50)]  # (width, height)
    images = []
    for i, (w, h) in enumerate(sizes, start=1):
        write_jpeg(img_dir / f"{i}.jpg", w, h, seed=i)
        images.append({"id": i, "file_name": f"{i}.jpg", "width": w, "height": h})
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [4, 5, 20, 10], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [30, 10, 30, 30], "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [0, 0, 40, 80], "iscrowd": 1},
        {"id": 4, "image_id": 2, "category_id": 7, "bbox": [10, 20, 5, 6], "iscrowd": 0},
    ]
    categories = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]
    ann_file = write_coco(tmp_path / "ann.json", images, annotations, categories)
    return ann_file, img_dir
