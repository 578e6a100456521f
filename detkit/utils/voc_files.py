"""The Pascal VOC conventions that datasets (``detkit.data.voc``) and the devkit evaluation
(``detkit.evaluation.voc_devkit``) share: the 20 class names and the image-set (split) files."""

from __future__ import annotations

from pathlib import Path
from typing import List, Union

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def split_file(voc_root: Union[str, Path], split: str) -> Path:
    """``<VOC20xx>/ImageSets/Main/<split>.txt``."""
    return Path(voc_root) / "ImageSets" / "Main" / f"{split}.txt"


def read_split(path: Union[str, Path]) -> List[str]:
    """The image names of a split file: the first word of each non-empty line (the per-class files
    ``<class>_<split>.txt`` add a second column, -1/0/1)."""
    return [line.split()[0] for line in Path(path).read_text().splitlines() if line.strip()]
