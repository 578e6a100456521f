"""Error galleries: the images behind the numbers, drawn with what went right and wrong.

:func:`build_gallery` picks the images worth looking at from a TIDE result
(``detkit.analysis.tide.tide_errors``): the images with the most errors, and for each error type
(Cls, Loc, Both, Dupe, Bkg, Miss) its most telling examples: the highest-scoring false positives
(a confident mistake says more than a 0.05 one) and, for Miss, the largest missed objects.
:func:`draw_gallery` draws each entry on a downscaled copy of its image:

- ground truth: dashed, light blue, labelled with its class;
- true positives: solid green, ``class score``;
- false positives: solid red, ``<type> class score`` (Cls, Loc, Both, Dupe or Bkg);
- misses: dashed magenta, ``Miss class``;
- the error an entry is about: drawn last, with a thicker line; in such an entry only that error
  and the object it concerns are labelled, the rest is thin context, so the example stays legible
  in a crowded image (the worst-image entries label everything);

with a caption band under the image that repeats the colour key and says what the entry shows, so
a thumbnail copied out of the report still explains itself.

Images missing on disk (or not readable) are skipped with one warning, never an exception: a
gallery of the images that are there beats no report.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from ..evaluation.fast_coco import pairwise_iou
from ..utils.io import atomic_write_bytes
from ..visualization import FONT, DrawStyle, box_corners, dashed_rectangle, draw_label, draw_style

logger = logging.getLogger("detkit")

PathLike = Union[str, Path]
ERROR_TYPES = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
ERROR_NAMES = {
    "Cls": "classification error (right place, wrong class)",
    "Loc": "localisation error (right class, box off)",
    "Both": "classification and localisation error",
    "Dupe": "duplicate detection",
    "Bkg": "background false positive",
    "Miss": "missed ground truth",
}
# RGB; the caption band repeats this key
COLORS = {
    "gt": (90, 200, 255),
    "tp": (40, 210, 60),
    "fp": (235, 45, 45),
    "miss": (230, 0, 230),
}
NOT_ERRORS = ("tp", "true_positives")  # per-image count keys that are not errors
KEY = (("GT", "gt"), ("TP", "tp"), ("FP", "fp"), ("Miss", "miss"))


# ---------------------------------------------------------------------------------------------
# choosing the entries


def build_gallery(
    gt,
    tide_result: Mapping,
    image_paths: Mapping[int, PathLike],
    per_image_errors: Optional[Mapping[int, Any]] = None,
    n_worst: int = 12,
    n_per_type: int = 6,
) -> List[Dict[str, Any]]:
    """The gallery entries: the ``n_worst`` images with the most errors, then for each error type
    up to ``n_per_type`` examples on distinct images (highest score first; Miss: largest first).

    ``gt`` is a :class:`detkit.evaluation.coco_io.GroundTruth`; ``tide_result`` has ``"errors"``
    and ``"true_positives"`` as ``tide_errors`` returns them; ``image_paths`` maps image ids to
    files. ``per_image_errors`` (image id -> error count, or -> ``{kind: count}`` such as the
    confusion matrix' ``per_image``, whose ``tp`` is not counted) ranks the worst images; by
    default the errors in ``tide_result`` are counted. Errors flagged ``ignored`` (in a crowd
    region) are left out.

    Each entry is a dict: ``kind`` ("worst" or an error type), ``title`` and ``caption`` (plain
    text, to be escaped by whoever renders it), ``image_id``, ``path``, ``focus`` (the error the
    entry is about, or None), and what to draw on that image: ``ground_truth`` (``[{"box",
    "category_id"}]``, XYWH), ``errors`` and ``true_positives`` (as in ``tide_result``), plus
    ``class_names``. Images without a path or missing on disk are left out, with one warning."""
    # a detection in an ignored region (crowd) counts nowhere: not an error worth showing
    errors = [
        e
        for e in tide_result.get("errors") or []
        if e.get("type") in ERROR_TYPES and not e.get("ignored")
    ]
    tps = list(tide_result.get("true_positives") or [])
    names = {int(k): str(v) for k, v in getattr(gt, "cat_names", {}).items()}
    counts = _error_counts(errors, per_image_errors)
    wanted = {e["image_id"] for e in errors} | {i for i, n in counts.items() if n > 0}
    image_paths = {int(k): v for k, v in image_paths.items()}  # ids read from JSON are strings
    available, missing = _available(wanted, image_paths)
    if missing:
        logger.warning(
            "error gallery: %d image(s) not found, left out (first: %s)", len(missing), missing[0]
        )

    by_image: Dict[int, List[dict]] = {}
    for e in errors:
        by_image.setdefault(int(e["image_id"]), []).append(e)
    tps_by_image: Dict[int, List[dict]] = {}
    for t in tps:
        tps_by_image.setdefault(int(t["image_id"]), []).append(t)

    def entry(kind: str, image_id: int, focus: Optional[dict]) -> Dict[str, Any]:
        errs = by_image.get(image_id, [])
        n_types = {t: sum(e["type"] == t for e in errs) for t in ERROR_TYPES}
        summary = ", ".join(f"{n} {t}" for t, n in n_types.items() if n) or "none"
        if focus is None:
            n = counts.get(image_id, len(errs))
            title = f"image {image_id}: {n} error{'' if n == 1 else 's'}"
        else:
            title = f"{focus['type']}: {_describe(focus, names)} (image {image_id})"
        return {
            "kind": kind,
            "title": title,
            "caption": f"{Path(str(available[image_id])).name}, TIDE errors: {summary}",
            "image_id": image_id,
            "path": str(available[image_id]),
            "focus": focus,
            "ground_truth": _gt_on_image(gt, image_id),
            "errors": errs,
            "true_positives": tps_by_image.get(image_id, []),
            "class_names": names,
        }

    entries = []
    worst = sorted((i for i in available if counts.get(i, 0) > 0), key=lambda i: (-counts[i], i))
    entries += [entry("worst", i, None) for i in worst[: max(0, n_worst)]]
    for kind in ERROR_TYPES:
        examples = [e for e in errors if e["type"] == kind and int(e["image_id"]) in available]
        examples.sort(key=_miss_size if kind == "Miss" else _score, reverse=True)
        seen = set()
        for e in examples:
            if len(seen) >= max(0, n_per_type):
                break
            if int(e["image_id"]) not in seen:
                seen.add(int(e["image_id"]))
                entries.append(entry(kind, int(e["image_id"]), e))
    return entries


def _available(ids, image_paths: Mapping) -> Tuple[Dict[int, Path], List[str]]:
    available, missing = {}, []
    for i in sorted(int(x) for x in ids):
        path = image_paths.get(i)
        if path is None:
            missing.append(f"image id {i} (no path given)")
        elif not Path(path).is_file():
            missing.append(str(path))
        else:
            available[i] = Path(path)
    return available, missing


def _error_counts(errors: Sequence[dict], per_image: Optional[Mapping]) -> Dict[int, int]:
    """Errors per image: from ``per_image`` (a count, or ``{kind: count}`` whose ``tp`` entry,
    the true positives, is left out) or else by counting ``errors``."""
    counts: Dict[int, int] = {}
    if per_image is None:
        for e in errors:
            counts[int(e["image_id"])] = counts.get(int(e["image_id"]), 0) + 1
        return counts
    for image_id, value in per_image.items():
        if isinstance(value, Mapping):
            value = sum(
                v
                for k, v in value.items()
                if k not in NOT_ERRORS and isinstance(v, (int, float, np.integer))
            )
        counts[int(image_id)] = int(value)
    return counts


def _score(e: dict) -> float:
    return float(e["score"]) if e.get("score") is not None else -1.0


def _miss_size(e: dict) -> float:
    box = e.get("gt_box")
    return float(box[2]) * float(box[3]) if box is not None else -1.0


def _describe(e: dict, names: Mapping[int, str]) -> str:
    det = _name(e.get("det_category_id"), names)
    gt = _name(e.get("gt_category_id"), names)
    score = f" {e['score']:.2f}" if e.get("score") is not None else ""
    if e["type"] == "Miss":
        w, h = (e.get("gt_box") or [0, 0, 0, 0])[2:]
        return f"{gt}, {w:.0f}x{h:.0f} px"
    if e["type"] in ("Cls", "Both") and e.get("gt_category_id") is not None:
        return f"{det}{score} on a {gt}"
    return f"{det}{score}"


def _name(category_id: Any, names: Mapping[int, str]) -> str:
    if category_id is None:
        return "?"
    return names.get(int(category_id), str(category_id))


def _gt_on_image(gt, image_id: int) -> List[Dict[str, Any]]:
    mask = np.asarray(gt.ann_image_id) == image_id
    return [
        {"box": [float(v) for v in box], "category_id": int(c)}
        for box, c in zip(np.asarray(gt.ann_bbox)[mask], np.asarray(gt.ann_category_id)[mask])
    ]


# ---------------------------------------------------------------------------------------------
# drawing


def draw_gallery(
    entries: Sequence[Mapping], out_dir: PathLike, max_side: int = 640, fmt: str = "png"
) -> List[Path]:
    """Draw every entry (see :func:`build_gallery`) into ``out_dir`` as ``<kind>_<nn>_img<id>``
    PNG (``fmt="png"``) or JPEG (``"jpg"``, smaller, what the HTML report embeds), downscaled so
    the long side is at most ``max_side``; return the paths written. Unreadable images are skipped
    with one warning."""
    return [path for _, path in draw_gallery_entries(entries, out_dir, max_side, fmt)]


def draw_gallery_entries(
    entries: Sequence[Mapping], out_dir: PathLike, max_side: int = 640, fmt: str = "png"
) -> List[Tuple[Mapping, Path]]:
    """:func:`draw_gallery`, returning each drawn entry with its file (the report needs both)."""
    if fmt not in ("png", "jpg"):
        raise ValueError(f"gallery images are 'png' or 'jpg', got {fmt!r}")
    out_dir = Path(out_dir)
    drawn, unreadable = [], []
    numbers: Dict[str, int] = {}
    for e in entries:
        image = cv2.imread(str(e["path"]), cv2.IMREAD_COLOR)
        if image is None:
            unreadable.append(str(e["path"]))
            continue
        picture = draw_entry(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), e, max_side)
        numbers[e["kind"]] = numbers.get(e["kind"], 0) + 1
        name = f"{e['kind']}_{numbers[e['kind']]:02d}_img{e['image_id']}.{fmt}"
        params = [cv2.IMWRITE_JPEG_QUALITY, 80] if fmt == "jpg" else []
        ok, data = cv2.imencode(f".{fmt}", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR), params)
        if not ok:
            unreadable.append(str(e["path"]))
            continue
        drawn.append((e, atomic_write_bytes(data.tobytes(), out_dir / name)))
    if unreadable:
        logger.warning(
            "error gallery: %d image(s) could not be read or encoded, left out (first: %s)",
            len(unreadable),
            unreadable[0],
        )
    return drawn


def draw_entry(image: np.ndarray, entry: Mapping, max_side: int = 640) -> np.ndarray:
    """One gallery picture: ``image`` (RGB, original size) scaled to ``max_side``, with the
    entry's boxes drawn and a caption band below. Returns a new RGB uint8 array."""
    h, w = image.shape[:2]
    # every thumbnail gets the same long side (small images are enlarged, at most 4x), so the
    # boxes, labels and caption look alike across the gallery
    scale = min(4.0, float(max_side) / max(h, w, 1))
    if scale != 1.0:
        size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
        interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
        image = cv2.resize(image, size, interpolation=interpolation)
    img = np.ascontiguousarray(image, dtype=np.uint8).copy()
    style = _thumbnail_style(img.shape[0], img.shape[1])
    names = entry.get("class_names") or {}
    focus = entry.get("focus")
    for box, key, text, dashed, weight in _boxes_to_draw(entry, names, focus):
        _draw_box(img, [v * scale for v in box], COLORS[key], text, dashed, weight, style)
    return _with_caption(img, str(entry.get("title", "")), style)


def _boxes_to_draw(entry: Mapping, names: Mapping[int, str], focus: Optional[Mapping]) -> list:
    """``(box XYWH, colour key, label, dashed, weight)`` in drawing order. Weight 2: the error
    the entry is about (thick); 1: labelled; -1: labelled at the bottom edge (the object the focus
    error concerns); 0: context (thin, no label). An entry about one error
    labels only that error and the object it concerns, so the example stays readable in a busy
    image; an entry without a focus (the worst images) labels everything."""
    focus_gt = focus.get("gt_box") if focus else None
    normal = 1 if focus is None else 0
    boxes = []
    for t in entry.get("true_positives", []):
        text = f"{_name(t.get('category_id'), names)} {_score(t):.2f}"
        boxes.append((t["det_box"], "tp", text, False, normal))
    missed = set()
    for e in entry.get("errors", []):
        weight = 2 if focus is not None and e == focus else normal
        if e["type"] == "Miss":
            if e.get("gt_box"):
                missed.add(_key(e["gt_box"]))
                text = f"Miss {_name(e.get('gt_category_id'), names)}"
                boxes.append((e["gt_box"], "miss", text, True, weight))
        elif e.get("det_box"):
            text = f"{e['type']} {_name(e.get('det_category_id'), names)} {_score(e):.2f}"
            boxes.append((e["det_box"], "fp", text, False, weight))
    detected = [b[0] for b in boxes if not b[3]]
    for g in entry.get("ground_truth", []):
        if _key(g["box"]) in missed:
            continue  # drawn as a miss
        if focus_gt is not None and _key(g["box"]) == _key(focus_gt):
            # the object the focus error is about; -1: labelled at its bottom edge, since the
            # focus' own label takes the top-left corner it usually shares with it
            weight = -1
        elif focus is None and not _overlaps(g["box"], detected, 0.7):
            weight = 1
        else:
            # under a detection: the outline only, the detection's label names the class (two
            # labels would sit on the same corner)
            weight = 0
        boxes.append((g["box"], "gt", _name(g["category_id"], names), True, weight))
    # context first, then solid boxes under the dashed outlines, the focus on top
    boxes.sort(key=lambda b: (b[4] == 2, b[4] != 0, b[3]))
    return boxes


def _key(box: Sequence[float]) -> tuple:
    return tuple(round(float(v), 3) for v in box)


def _thumbnail_style(height: int, width: int) -> DrawStyle:
    """Lines and labels for a thumbnail: bolder than ``draw_style`` would pick for its pixel size,
    since a thumbnail is shown small."""
    base = draw_style(height, width)
    return DrawStyle(max(2, base.thickness), max(0.45, base.font_scale), 1)


def _draw_box(img, xywh, color, text: str, dashed: bool, weight: int, style: DrawStyle) -> None:
    h, w = img.shape[:2]
    x, y, bw, bh = xywh
    corners = box_corners((x, y, x + bw, y + bh), h, w)
    thickness = {0: 1, 2: 2 * style.thickness}.get(weight, style.thickness)
    if dashed:
        dashed_rectangle(img, corners, color, thickness)
    else:
        cv2.rectangle(img, corners[:2], corners[2:], color, thickness)
    if not text or weight == 0:
        return
    if weight == -1:  # the label under the box's bottom edge, or just inside it at the bottom
        (_, th), base = cv2.getTextSize(text, FONT, style.font_scale, style.font_thickness)
        height = th + base + 2 * max(1, style.thickness)
        y = corners[3] + 1 + height if corners[3] + 1 + height < h else corners[3] - 1
        corners = (corners[0], y, corners[2], corners[3])
    draw_label(img, text, corners, color, style, filled=not dashed)


def _overlaps(box: Sequence[float], others: List[Sequence[float]], thresh: float) -> bool:
    """Whether any of ``others`` overlaps the XYWH ``box`` with IoU above ``thresh``."""
    if not others:
        return False
    many = np.asarray(others, dtype=np.float64).reshape(-1, 4)
    one = np.broadcast_to(np.asarray(box, dtype=np.float64), many.shape)
    return bool((pairwise_iou(many, one, np.zeros(len(many), bool)) > thresh).any())


def _with_caption(img: np.ndarray, title: str, style: DrawStyle) -> np.ndarray:
    """``img`` with a dark band below: the colour key on one line, the title on the next."""
    w = img.shape[1]
    scale = float(np.clip(style.font_scale * 1.1, 0.45, 0.7))
    thick = 1
    (_, th), base = cv2.getTextSize("Ag", FONT, scale, thick)
    line = th + base + 6
    band = np.full((2 * line + 6, w, 3), 30, np.uint8)
    x = 6
    for label, key in KEY:
        cv2.rectangle(band, (x, 5), (x + th, 5 + th), COLORS[key], -1)
        x += th + 4
        cv2.putText(band, label, (x, 5 + th), FONT, scale, (235, 235, 235), thick, cv2.LINE_AA)
        x += cv2.getTextSize(label, FONT, scale, thick)[0][0] + 12
    title = _fit(title, w - 12, scale, thick)
    cv2.putText(band, title, (6, line + 5 + th), FONT, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return np.concatenate([img, band], axis=0)


def _fit(text: str, width: int, scale: float, thick: int) -> str:
    """``text`` shortened with ``...`` until it fits ``width`` pixels (Hershey fonts are ASCII)."""
    text = text.encode("ascii", "replace").decode("ascii")
    while text and cv2.getTextSize(text, FONT, scale, thick)[0][0] > width:
        text = text[:-4] + "..." if len(text) > 4 else ""
    return text
