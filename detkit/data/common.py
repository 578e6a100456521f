"""What every detkit dataset shares: the error type, data-root resolution and the record -> sample step.

A dataset holds ``records`` (one dict per image, see docs/architecture.md) and a ``mapper``; indexing
reads the image from disk and lets the mapper turn ``(record, image)`` into a sample.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, List, Optional, Union

import numpy as np
import torch

from detkit.data.image_io import read_image
from detkit.errors import DataError

logger = logging.getLogger("detkit")

DATASETS_README = "datasets/README.md"
PathLike = Union[str, os.PathLike]


def resolve_data_root(root: Optional[PathLike] = None) -> Path:
    """The folder relative dataset paths resolve against.

    ``root`` (config ``data.root``) if given, else ``$DETKIT_DATASETS``, else ``./datasets``.
    """
    if root:
        return Path(root).expanduser()
    env = os.environ.get("DETKIT_DATASETS", "")
    if env:
        return Path(env).expanduser()
    return Path("datasets")


def resolve_path(
    path: PathLike,
    root: Optional[PathLike] = None,
    *,
    what: str = "dataset path",
    must_exist: bool = True,
) -> Path:
    """``path`` made absolute against the data root; a clear error when it must exist and does not."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = resolve_data_root(root) / p
    p = p.absolute()
    if must_exist and not p.exists():
        raise DataError(
            f"{what} not found: {p} (relative paths resolve against data.root, else $DETKIT_DATASETS, "
            f"else ./datasets; see {DATASETS_README} for the expected layout)"
        )
    return p


def empty_record_arrays() -> dict:
    return {
        "boxes": np.zeros((0, 4), dtype=np.float32),
        "labels": np.zeros((0,), dtype=np.int64),
        "difficult": np.zeros((0,), dtype=np.bool_),
    }


def raw_sample(record: dict, image: np.ndarray) -> dict:
    """The sample for a dataset without mapper: the image as read, uint8 (3,H,W), and its boxes."""
    chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    return {
        "image": chw,
        "image_id": int(record["image_id"]),
        "height": int(record["height"]),
        "width": int(record["width"]),
        "gt_boxes": torch.as_tensor(record["boxes"], dtype=torch.float32).reshape(-1, 4),
        "gt_labels": torch.as_tensor(record["labels"], dtype=torch.int64).reshape(-1),
    }


class DetectionDataset(torch.utils.data.Dataset):
    """Base class: ``records`` + ``class_names`` + ``mapper``; subclasses only fill the records.

    ``exif`` (set from ``input.exif`` by the builder) applies the EXIF orientation when reading.
    With ``skip_broken`` an unreadable image is logged and counted: a training mapper gets the next
    readable image instead, inference gets ``None`` (``collate`` drops it, so the image is not predicted).
    """

    evaluator_type: str = "coco"
    # the constructor parameter that relative paths resolve against (the builder fills it from data.root)
    data_root_param: str = "data_root"

    def __init__(self, mapper: Optional[Callable] = None, skip_broken: bool = False):
        self.mapper = mapper
        self.skip_broken = skip_broken
        self.exif = True
        self.num_skipped = 0
        self.class_names: List[str] = []
        self.records: List[dict] = []
        self.source = ""  # what the records were read from, for messages

    def __len__(self) -> int:
        return len(self.records)

    def check_image_files(self) -> None:
        """One stat per record, when the dataset is loaded: a missing image file is a ``DataError``
        now (naming the count, the first few files and image ids, and where they are listed) rather
        than when the sampler reaches it, hours into a run. With ``skip_broken`` a missing file is
        an unreadable image like any other: one warning now, and it is skipped when read."""
        missing = [r for r in self.records if not os.path.isfile(r["file_name"])]
        if not missing:
            return
        shown = ", ".join(f"{r['file_name']} (image id {r['image_id']})" for r in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        problem = (
            f"{len(missing)} of {len(self.records)} image files listed in "
            f"{self.source or type(self).__name__} do not exist: {shown}{more}"
        )
        if len(missing) == len(self.records):
            folder = os.path.dirname(missing[0]["file_name"])
            problem += f" (none of them does: is the image folder {folder} right?)"
        if self.skip_broken:
            logger.warning("%s; data.skip_broken_images=true: they are skipped when read", problem)
            return
        raise DataError(f"{problem}; data.skip_broken_images=true skips unreadable images")

    def __getitem__(self, index: int) -> Optional[dict]:
        is_train = bool(getattr(self.mapper, "is_train", False))
        tries = min(len(self.records), 100) if (self.skip_broken and is_train) else 1
        for k in range(tries):
            record = self.records[(index + k) % len(self.records)]
            try:
                image = self._load_image(record)
            except DataError as err:
                if not self.skip_broken:
                    raise self._broken_image_error(err, record) from None
                self.num_skipped += 1
                logger.warning(
                    "skipping broken image (%d so far in this process): %s", self.num_skipped, err
                )
                continue
            if self.mapper is None:
                return raw_sample(record, image)
            return self.mapper(record, image)
        if is_train:
            raise DataError(f"{tries} consecutive images from index {index} could not be read")
        return None

    def _broken_image_error(self, err: Exception, record: dict) -> Exception:
        """``err`` (same type, so it still pickles from its message alone) completed with what the
        reader does not know: where the image is listed and the switch that skips it."""
        return type(err)(
            f"{err} (image id {record['image_id']} in {self.source or type(self).__name__}); "
            "data.skip_broken_images=true skips unreadable images"
        )

    def _load_image(self, record: dict) -> np.ndarray:
        image = read_image(record["file_name"], exif=self.exif)
        expected = (int(record["height"]), int(record["width"]))
        if image.shape[:2] != expected:
            hint = ""
            if image.shape[:2] == expected[::-1]:
                hint = (
                    " (height and width are swapped: the EXIF orientation disagrees with the annotation; "
                    f"try input.exif={not self.exif})"
                )
            raise DataError(
                f"image {record['file_name']} (image id {record['image_id']}) is "
                f"{image.shape[1]}x{image.shape[0]} (WxH) but the annotation says "
                f"{expected[1]}x{expected[0]}{hint}"
            )
        return image

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source}: {len(self)} images, {len(self.class_names)} classes)"
