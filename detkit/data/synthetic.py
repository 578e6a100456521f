"""A synthetic detection dataset that detkit generates itself (see ``synthetic_draw`` for the pictures).

Layout of one split, written on first use::

    <root>/<split>/JPEGImages/000001.jpg ...   images (ids 1..N)
    <root>/<split>/annotations.json            COCO detection JSON (category ids 1..K)
    <root>/<split>/Annotations/, ImageSets/    VOC XML + split list (only with ``write_voc=True``)
    <root>/<split>/.complete                   marker with the generation parameters, written last

Every image is drawn from its own RNG seeded by (seed, split, index), so the result does not depend
on the order of generation and the ``train`` and ``val`` splits differ for the same seed. Files are
written atomically (``detkit.utils.io``: a temporary name, fsync, ``os.replace``), so concurrent
generators (several ranks) and readers never see half a file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import time
import zlib
from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
import numpy as np
from tqdm import tqdm

from detkit.data.coco import COCODataset, records_to_coco
from detkit.data.common import PathLike, resolve_path
from detkit.data.synthetic_draw import CLASSES, draw_image
from detkit.data.voc import write_voc_xml
from detkit.registry import DATASETS
from detkit.utils.io import atomic_write_bytes, atomic_write_text, write_json

logger = logging.getLogger("detkit")

GENERATOR_VERSION = 1  # bump when the drawing changes, so old folders are regenerated
MARKER = ".complete"


def synthetic_class_names(num_classes: int) -> list:
    if not 1 <= num_classes <= len(CLASSES):
        raise ValueError(
            f"num_classes must be in 1..{len(CLASSES)} for the synthetic dataset, got {num_classes}"
        )
    return [name for name, _, _ in CLASSES[:num_classes]]


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(split.encode("utf-8")), int(index)])


def _params(num_images, num_classes, image_size, seed, split, write_voc) -> dict:
    return {
        "version": GENERATOR_VERSION,
        "num_images": int(num_images),
        "num_classes": int(num_classes),
        "image_size": [int(image_size[0]), int(image_size[1])],
        "seed": int(seed),
        "split": split,
        "write_voc": bool(write_voc),
    }


def _is_complete(folder: Path, params: dict) -> bool:
    marker = folder / MARKER
    if not marker.exists():
        return False
    try:
        found = json.loads(marker.read_text())
    except (OSError, ValueError):
        found = None
    if found == params:
        return True
    logger.warning(
        "synthetic dataset %s was generated with %s; regenerating with %s", folder, found, params
    )
    return False


def generate_image(index: int, seed: int, split: str, num_classes: int, image_size: Sequence[int]):
    """Image ``index`` (0-based) of a split: (uint8 HxWx3 RGB, float32 (N,4) XYXY, int64 (N,) labels)."""
    rng = _image_rng(seed, split, index)
    low, high = int(image_size[0]), int(image_size[1])
    height, width = (int(v) for v in rng.integers(low, high + 1, size=2))
    return draw_image(height, width, num_classes, rng)


@contextlib.contextmanager
def _pool(workers: int):
    if workers <= 1:
        yield None
        return
    # spawn, not fork: a process forked from one that already runs torch/OpenCV/logging threads can
    # inherit a held lock and hang (seen once in the test suite)
    with multiprocessing.get_context("spawn").Pool(
        workers, initializer=cv2.setNumThreads, initargs=(1,)
    ) as pool:
        yield pool


def _write_one(job) -> dict:
    """Draw, encode and write image ``index``; return its record (also the VOC XML when asked)."""
    index, seed, split, num_classes, image_size, folder, write_voc, quality = job
    folder = Path(folder)
    image, boxes, labels = generate_image(index, seed, split, num_classes, image_size)
    name = f"{index + 1:06d}"
    ok, encoded = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"OpenCV failed to encode synthetic image {name}")
    file_name = folder / "JPEGImages" / f"{name}.jpg"
    atomic_write_bytes(encoded.tobytes(), file_name)
    if write_voc:
        write_voc_xml(
            folder / "Annotations" / f"{name}.xml",
            f"{name}.jpg",
            image.shape[1],
            image.shape[0],
            boxes,
            labels,
            synthetic_class_names(num_classes),
        )
    return {
        "image_id": index + 1,
        "file_name": str(file_name),
        "height": image.shape[0],
        "width": image.shape[1],
        "boxes": boxes,
        "labels": labels,
    }


def generate_synthetic(
    folder: PathLike,
    num_images: int = 1000,
    num_classes: int = 6,
    image_size: Sequence[int] = (256, 384),
    seed: int = 0,
    split: str = "train",
    write_voc: bool = False,
    jpeg_quality: int = 90,
    workers: int = 1,
) -> Path:
    """Write one split to ``folder`` unless a complete one with the same parameters is there already.

    Returns the path of the COCO JSON. ``image_size`` = (min, max): height and width are drawn
    independently from that range, so both landscape and portrait images occur. ``workers`` > 1
    draws and encodes the images in that many spawned processes (each starts by importing detkit,
    so it pays off for thousands of images); every image has its own RNG, so the files are the same
    for any number of workers.
    """
    folder = Path(folder)
    params = _params(num_images, num_classes, image_size, seed, split, write_voc)
    ann_file = folder / "annotations.json"
    if _is_complete(folder, params):
        return ann_file
    class_names = synthetic_class_names(num_classes)
    (folder / "JPEGImages").mkdir(parents=True, exist_ok=True)
    records, start, cpu_start = [], time.perf_counter(), time.process_time()
    jobs = [
        (i, seed, split, num_classes, tuple(image_size), str(folder), write_voc, int(jpeg_quality))
        for i in range(num_images)
    ]
    workers = max(1, int(workers))
    with _pool(workers) as pool:
        results = (
            pool.imap(_write_one, jobs, chunksize=8) if pool is not None else map(_write_one, jobs)
        )
        for record in tqdm(
            results,
            total=num_images,
            desc=f"generating synthetic {split}",
            unit="img",
            mininterval=1.0,
        ):
            records.append(record)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if write_voc:
        atomic_write_text(
            "".join(f"{i + 1:06d}\n" for i in range(num_images)),
            folder / "ImageSets" / "Main" / f"{split}.txt",
        )
    coco = records_to_coco(records, class_names, img_dir=folder / "JPEGImages")
    write_json(coco, ann_file, indent=None)
    atomic_write_text(json.dumps(params), folder / MARKER)  # last: the split is complete
    logger.info(
        "generated synthetic %s split in %s: %d images, %d boxes in %.1f s (%d processes, %.1f s CPU in "
        "this one, %.1f ms/image)",
        split,
        folder,
        num_images,
        sum(len(r["boxes"]) for r in records),
        elapsed,
        workers,
        cpu,
        1000.0 * elapsed / max(num_images, 1),
    )
    return ann_file


@DATASETS.register()
class SyntheticDataset(COCODataset):
    """Procedurally drawn shapes on cluttered backgrounds, generated into ``<root>/<split>`` on first use.

    ``root`` is relative to the data root (``data.root``, ``$DETKIT_DATASETS``, ``./datasets``).
    Classes (first ``num_classes`` of): circle, rectangle, triangle, star, cross, ring, frame,
    hexagon (striped), diamond (checker), arrow. Loaded as a COCO dataset (``evaluator_type="coco"``).
    """

    data_root_param = "data_root"

    def __init__(
        self,
        root: str,
        num_images: int = 1000,
        num_classes: int = 6,
        image_size: Union[int, Sequence[int]] = (256, 384),
        seed: int = 0,
        split: str = "train",
        mapper=None,
        filter_empty: bool = False,
        skip_broken: bool = False,
        write_voc: bool = False,
        data_root: Optional[str] = None,
    ):
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        if len(image_size) != 2 or not 0 < image_size[0] <= image_size[1]:
            raise ValueError(f"image_size must be (min, max) with 0 < min <= max, got {image_size}")
        folder = resolve_path(root, data_root, must_exist=False) / split
        self.split, self.seed = split, seed
        ann_file = generate_synthetic(
            folder, num_images, num_classes, image_size, seed, split, write_voc
        )
        super().__init__(
            ann_file=str(ann_file),
            img_dir=str(folder / "JPEGImages"),
            filter_empty=filter_empty,
            mapper=mapper,
            skip_broken=skip_broken,
        )
