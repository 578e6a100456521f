"""Pascal VOC datasets: a ``VOCdevkit/VOC20xx`` folder with Annotations/*.xml, ImageSets/Main/<split>.txt
and JPEGImages/.

Coordinates: VOC XML boxes are 1-based pixel indices with both ends inclusive (a box covering pixel
columns 0..9 is written xmin=1, xmax=10). detkit boxes are 0-based continuous XYXY, so a box is read
as ``[xmin - 1, ymin - 1, xmax, ymax]`` (x2, y2 kept: the 1-based index of the last pixel equals the
0-based continuous coordinate of its right edge) and written back as ``[x1 + 1, y1 + 1, x2, y2]``.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image

from detkit.data.common import DetectionDataset, PathLike, empty_record_arrays, resolve_path
from detkit.errors import DataError
from detkit.registry import DATASETS
from detkit.utils.voc_files import VOC_CLASSES, read_split, split_file

logger = logging.getLogger("detkit")


def _int_or_none(node: Optional[ET.Element]) -> Optional[int]:
    try:
        return int(float(node.text)) if node is not None and node.text else None
    except ValueError:
        return None


def _parse_object(obj: ET.Element, label_of: dict, path) -> tuple:
    name = (obj.findtext("name") or "").strip()
    if name not in label_of:
        raise DataError(f"{path}: unknown class name {name!r} (classes: {list(label_of)})")
    bndbox = obj.find("bndbox")
    try:
        xmin, ymin, xmax, ymax = (
            float(bndbox.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")
        )
    except (AttributeError, TypeError, ValueError):
        raise DataError(
            f"{path}: object {name!r} has no valid <bndbox> xmin/ymin/xmax/ymax"
        ) from None
    difficult = _int_or_none(obj.find("difficult")) or 0  # a missing <difficult> means 0
    return [xmin - 1.0, ymin - 1.0, xmax, ymax], label_of[name], bool(difficult)


def parse_voc_xml(path: PathLike, class_names: Sequence[str] = VOC_CLASSES) -> dict:
    """One VOC annotation file -> ``{"filename", "width", "height", "boxes", "labels", "difficult"}``.

    ``width``/``height`` are None when the file does not give them (or gives 0).
    Boxes are 0-based float32 XYXY (see the module docstring); degenerate ones are dropped with a warning.
    """
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise DataError(f"cannot parse VOC annotation {path}: {err}") from None
    size = root.find("size")
    width = _int_or_none(size.find("width")) if size is not None else None
    height = _int_or_none(size.find("height")) if size is not None else None
    label_of = {name: i for i, name in enumerate(class_names)}
    out = {
        "filename": root.findtext("filename"),
        "width": width or None,
        "height": height or None,
        **empty_record_arrays(),
    }
    boxes, labels, difficult = [], [], []
    for k, obj in enumerate(root.findall("object")):
        box, label, diff = _parse_object(obj, label_of, path)
        if box[2] <= box[0] or box[3] <= box[1]:
            logger.warning(
                "%s: object #%d (%s) has an empty box %s; dropped", path, k, class_names[label], box
            )
            continue
        boxes.append(box)
        labels.append(label)
        difficult.append(diff)
    if boxes:
        out["boxes"] = np.asarray(boxes, dtype=np.float32)
        out["labels"] = np.asarray(labels, dtype=np.int64)
        out["difficult"] = np.asarray(difficult, dtype=np.bool_)
    return out


def write_voc_xml(
    path: PathLike,
    filename: str,
    width: int,
    height: int,
    boxes,
    labels,
    class_names: Sequence[str],
    difficult=None,
) -> None:
    """Write one VOC annotation file for 0-based XYXY ``boxes`` (converted to VOC's 1-based integers)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, key).text = str(int(value))
    difficult = np.zeros(len(labels), bool) if difficult is None else difficult
    for box, label, diff in zip(boxes, labels, difficult):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = class_names[int(label)]
        ET.SubElement(obj, "difficult").text = str(int(bool(diff)))
        bnd = ET.SubElement(obj, "bndbox")
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        for key, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(bnd, key).text = str(value)
    ET.indent(root)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8")


def voc_image_ids(names: Sequence[str]) -> List[int]:
    """Integer image ids: ``000005`` -> 5, ``2008_000002`` -> 2008000002 (unique across VOC07 and VOC12);
    names that are not all digits (after removing ``_``) fall back to 1-based line numbers."""
    digits = [n.replace("_", "") for n in names]
    if all(d.isdigit() for d in digits) and len(set(map(int, digits))) == len(digits):
        return [int(d) for d in digits]
    return list(range(1, len(names) + 1))


@DATASETS.register()
class VOCDataset(DetectionDataset):
    """A Pascal VOC split. ``root`` is a ``VOC20xx`` folder, or ``VOCdevkit`` when ``year`` is given.

    ``difficult`` boxes are kept as a flag (``keep_difficult=False`` removes them from the records);
    the training mapper drops them by default. ``class_names`` defaults to the 20 VOC classes; pass
    your own to read any VOC-format folder.
    """

    evaluator_type = "voc"
    data_root_param = "data_root"

    def __init__(
        self,
        root: str,
        split: str,
        year: Optional[int] = None,
        mapper=None,
        keep_difficult: bool = True,
        class_names: Optional[Sequence[str]] = None,
        filter_empty: bool = False,
        skip_broken: bool = False,
        data_root: Optional[str] = None,
    ):
        super().__init__(mapper=mapper, skip_broken=skip_broken)
        folder = Path(root) / f"VOC{year}" if year is not None else Path(root)
        self.root = str(resolve_path(folder, data_root, what="VOC folder"))
        self.split = split
        self.source = f"{self.root} {split}"
        match = re.search(r"VOC(\d{4})", Path(self.root).name)
        self.year = int(year) if year is not None else (int(match.group(1)) if match else None)
        self.class_names = list(class_names) if class_names is not None else list(VOC_CLASSES)
        path = resolve_path(
            split_file(self.root, split),
            what=f"VOC split file for split {split!r}",
        )
        names = read_split(path)
        self.records = [
            self._make_record(name, image_id, keep_difficult)
            for name, image_id in zip(names, voc_image_ids(names))
        ]
        if filter_empty:
            kept = [r for r in self.records if len(r["boxes"])]
            logger.info(
                "%s %s: filtered out %d of %d images without boxes",
                self.root,
                split,
                len(self.records) - len(kept),
                len(self.records),
            )
            self.records = kept
        self.check_image_files()
        logger.info(
            "loaded VOC %s (%s): %d images, %d boxes (%d difficult)",
            self.root,
            split,
            len(self.records),
            sum(len(r["boxes"]) for r in self.records),
            sum(int(r["difficult"].sum()) for r in self.records),
        )

    def _make_record(self, name: str, image_id: int, keep_difficult: bool) -> dict:
        xml_path = Path(self.root) / "Annotations" / f"{name}.xml"
        if not xml_path.exists():
            raise DataError(
                f"VOC annotation not found: {xml_path} (listed in split {self.split!r})"
            )
        ann = parse_voc_xml(xml_path, self.class_names)
        file_name = str(Path(self.root) / "JPEGImages" / f"{name}.jpg")
        width, height = ann["width"], ann["height"]
        if (
            width is None or height is None
        ):  # some VOC-format tools write no or zero size: ask the file
            try:
                with Image.open(file_name) as im:
                    width, height = im.size
            except OSError as err:
                raise DataError(
                    f"{xml_path} gives no image size and {file_name} cannot be opened: {err}"
                ) from err
        keep = np.ones(len(ann["labels"]), bool) if keep_difficult else ~ann["difficult"]
        return {
            "image_id": image_id,
            "file_name": file_name,
            "height": int(height),
            "width": int(width),
            "boxes": ann["boxes"][keep],
            "labels": ann["labels"][keep],
            "difficult": ann["difficult"][keep],
            "image_name": name,
        }
