"""Drawing detections and ground truth on images: one module for both, so they look alike.

- Colours: one per class from a deterministic palette (``class_color``); the same label gets the
  same colour in every image, video frame and run.
- Predictions: solid boxes with a filled label ``"name 0.87"``. Ground truth: dashed boxes with an
  outlined (unfilled) label ``"name"``, so both can be drawn on one image and told apart.
- Line width and font scale follow the image size (``draw_style``): 1 px lines and a small font on a
  300 px image, thicker lines and a larger font on a 4000 px photo.

Images are ``np.uint8`` HxWx3 arrays (RGB in detkit; the functions do not care about the channel
order as long as the colours are given in the same order). Boxes are XYXY in pixels. The input
image is never modified; a drawn copy is returned.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

Color = Tuple[int, int, int]
FONT = cv2.FONT_HERSHEY_SIMPLEX
_GOLDEN = 0.618033988749895  # hue step: consecutive labels land far apart on the colour wheel


def class_color(label: int) -> Color:
    """A saturated, bright colour for ``label``: deterministic, distinct for neighbouring labels."""
    hue = (0.07 + int(label) * _GOLDEN) % 1.0
    sat = 0.85 if int(label) % 2 == 0 else 0.65
    r, g, b = colorsys.hsv_to_rgb(hue, sat, 0.95)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


@dataclass(frozen=True)
class DrawStyle:
    thickness: int  # box line width in pixels
    font_scale: float  # cv2 Hershey font scale
    font_thickness: int


def draw_style(height: int, width: int) -> DrawStyle:
    """Line width and font scale for an image of this size (readable from ~100 px to ~8000 px)."""
    size = float(np.sqrt(max(height, 1) * max(width, 1)))
    thickness = max(1, int(round(size / 450)))
    font_scale = float(np.clip(size / 1300, 0.35, 3.0))
    return DrawStyle(thickness, font_scale, max(1, int(round(font_scale * 1.6))))


def _text_color(background: Color) -> Color:
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def box_corners(box: Sequence[float], height: int, width: int) -> Tuple[int, int, int, int]:
    """Integer corners of the outline: the first and last pixel rows/columns the box covers.

    A box (x1, y1, x2, y2) in continuous coordinates covers pixels x1 .. x2 - 1, so a box
    (10, 20, 50, 60) is outlined on columns 10 and 49 and rows 20 and 59.
    """
    x1, y1 = int(round(float(box[0]))), int(round(float(box[1])))
    x2, y2 = int(round(float(box[2]))) - 1, int(round(float(box[3]))) - 1
    x1, x2 = min(max(x1, 0), width - 1), min(max(x2, 0), width - 1)
    y1, y2 = min(max(y1, 0), height - 1), min(max(y2, 0), height - 1)
    return x1, y1, max(x1, x2), max(y1, y2)


def dashed_rectangle(img: np.ndarray, corners, color: Color, thickness: int) -> None:
    """The ground truth's outline: a dashed rectangle on ``box_corners``' corners, drawn in place."""
    x1, y1, x2, y2 = corners
    dash = max(4, 4 * thickness)
    for (ax, ay), (bx, by) in (
        ((x1, y1), (x2, y1)),
        ((x2, y1), (x2, y2)),
        ((x2, y2), (x1, y2)),
        ((x1, y2), (x1, y1)),
    ):
        length = max(abs(bx - ax), abs(by - ay))
        for start in range(0, length + 1, 2 * dash):
            end = min(start + dash, length)
            t0, t1 = start / max(length, 1), end / max(length, 1)
            p0 = (int(round(ax + (bx - ax) * t0)), int(round(ay + (by - ay) * t0)))
            p1 = (int(round(ax + (bx - ax) * t1)), int(round(ay + (by - ay) * t1)))
            cv2.line(img, p0, p1, color, thickness, cv2.LINE_AA if thickness > 1 else cv2.LINE_8)


def draw_label(
    img: np.ndarray, text: str, corners, color: Color, style: DrawStyle, filled: bool
) -> None:
    """Draw ``text`` in place: above the box's top-left corner, or just inside the box when there
    is no room; filled (predictions) or outlined (ground truth)."""
    (tw, th), base = cv2.getTextSize(text, FONT, style.font_scale, style.font_thickness)
    pad = max(1, style.thickness)
    x1, y1 = corners[0], corners[1]
    top = y1 - th - base - 2 * pad
    if top < 0:
        top = y1 + style.thickness
    x1 = min(x1, max(0, img.shape[1] - tw - 2 * pad))
    box_end = (x1 + tw + 2 * pad, top + th + base + 2 * pad)
    if filled:
        cv2.rectangle(img, (x1, top), box_end, color, -1)
        text_color = _text_color(color)
    else:  # ground truth: a dark backing so the coloured text stays readable on any background
        cv2.rectangle(img, (x1, top), box_end, (0, 0, 0), -1)
        text_color = color
    cv2.putText(
        img,
        text,
        (x1 + pad, top + pad + th),
        FONT,
        style.font_scale,
        text_color,
        style.font_thickness,
        cv2.LINE_AA,
    )


def _name(label: int, class_names: Optional[Sequence[str]]) -> str:
    if class_names is not None and 0 <= label < len(class_names):
        return str(class_names[label])
    return str(label)


def draw_boxes(
    image: np.ndarray,
    boxes,
    labels,
    scores=None,
    class_names: Optional[Sequence[str]] = None,
    *,
    ground_truth: bool = False,
    style: Optional[DrawStyle] = None,
) -> np.ndarray:
    """A copy of ``image`` with the boxes drawn: solid + filled label for predictions, dashed +
    outlined label for ground truth (``ground_truth=True``). Lowest scores are drawn first so the
    most confident boxes and labels end up on top."""
    img = np.ascontiguousarray(image, dtype=np.uint8).copy()
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 image, got shape {img.shape}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    scores = None if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(labels) != len(boxes) or (scores is not None and len(scores) != len(boxes)):
        raise ValueError(
            f"{len(boxes)} boxes but {len(labels)} labels"
            + ("" if scores is None else f" and {len(scores)} scores")
        )
    h, w = img.shape[:2]
    style = style or draw_style(h, w)
    order = np.argsort(scores, kind="stable") if scores is not None else range(len(boxes))
    for i in order:
        color = class_color(labels[i])
        corners = box_corners(boxes[i], h, w)
        text = _name(labels[i], class_names)
        if ground_truth:
            dashed_rectangle(img, corners, color, style.thickness)
        else:
            cv2.rectangle(img, corners[:2], corners[2:], color, style.thickness)
            if scores is not None:
                text = f"{text} {scores[i]:.2f}"
        draw_label(img, text, corners, color, style, filled=not ground_truth)
    return img


def draw_detections(
    image: np.ndarray,
    detections: dict,
    class_names: Optional[Sequence[str]] = None,
    style: Optional[DrawStyle] = None,
) -> np.ndarray:
    """Draw a prediction dict ``{"boxes", "scores", "labels"}`` (tensors or arrays)."""
    return draw_boxes(
        image,
        _np(detections["boxes"]),
        _np(detections["labels"]),
        _np(detections["scores"]),
        class_names,
        style=style,
    )


def draw_ground_truth(
    image: np.ndarray,
    boxes,
    labels,
    class_names: Optional[Sequence[str]] = None,
    style: Optional[DrawStyle] = None,
) -> np.ndarray:
    """Draw ground-truth boxes (dashed, unfilled labels)."""
    return draw_boxes(
        image, _np(boxes), _np(labels), None, class_names, ground_truth=True, style=style
    )


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
