"""Procedural drawing for the synthetic detection dataset (used by ``detkit.data.synthetic``).

One image = a cluttered background (gradient, blotchy and fine noise, lines, irregular blobs, text)
with 1..``max_objects`` objects on top. A class is a shape *and* a fill style (solid, outline, striped,
checker); colours are random per object so colour alone never gives the class. Objects range from
8 px to 60% of the shorter image side, may be cut by the border and may hide each other, but at least
half of every object stays visible. Each object's box is the tight box of its visible pixels.
"""

from __future__ import annotations

import math
from typing import List, Tuple

import cv2
import numpy as np

# (class name, shape, fill style); the first ``num_classes`` entries are the dataset's classes
CLASSES = (
    ("circle", "circle", "solid"),
    ("rectangle", "rectangle", "solid"),
    ("triangle", "triangle", "solid"),
    ("star", "star", "solid"),
    ("cross", "cross", "solid"),
    ("ring", "circle", "outline"),
    ("frame", "rectangle", "outline"),
    ("hexagon", "hexagon", "striped"),
    ("diamond", "diamond", "checker"),
    ("arrow", "arrow", "solid"),
)
MIN_OBJECT_SIZE = 8  # px, longest extent of the smallest objects
MAX_OBJECT_FRACTION = 0.6  # of the shorter image side
MIN_VISIBLE_FRACTION = 0.5  # of an object's pixels, after border cut and occlusion
_SHIFT = 4  # cv2 sub-pixel bits for polygon vertices


def _polygon(shape: str, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Vertices (V, 2) around the origin, before rotation."""
    r = radius
    if shape in ("triangle", "hexagon"):
        n = 3 if shape == "triangle" else 6
        a = np.arange(n) * 2 * math.pi / n
        return np.stack([np.cos(a), np.sin(a)], 1) * r
    if shape == "star":
        a = np.arange(10) * math.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, r * rng.uniform(0.38, 0.5))
        return np.stack([np.cos(a) * rad, np.sin(a) * rad], 1)
    if shape == "rectangle":
        phi = math.atan(rng.uniform(0.35, 1.0))  # aspect ratio 0.35..1 before rotation
        hw, hh = r * math.cos(phi), r * math.sin(phi)
        return np.array([[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]])
    if shape == "diamond":
        w = r * rng.uniform(0.5, 0.75)
        return np.array([[0, -r], [w, 0], [0, r], [-w, 0]])
    if shape == "cross":
        a = r * rng.uniform(0.25, 0.4)
        return np.array(
            [
                [-a, -r],
                [a, -r],
                [a, -a],
                [r, -a],
                [r, a],
                [a, a],
                [a, r],
                [-a, r],
                [-a, a],
                [-r, a],
                [-r, -a],
                [-a, -a],
            ]
        )
    if shape == "arrow":
        head, shaft = rng.uniform(0.45, 0.65) * r, rng.uniform(0.15, 0.25) * r
        return np.array(
            [[-r, -shaft], [0, -shaft], [0, -head], [r, 0], [0, head], [0, shaft], [-r, shaft]]
        )
    raise ValueError(f"unknown shape {shape!r}")


def shape_mask(shape: str, style: str, size: float, rng: np.random.Generator) -> np.ndarray:
    """A bool mask of one object, ``size`` px across, centred in a square window."""
    radius = size / 2.0
    thickness = max(2, int(round(radius * rng.uniform(0.18, 0.3)))) if style == "outline" else 0
    half = int(math.ceil(radius + thickness)) + 2
    mask = np.zeros((2 * half + 1, 2 * half + 1), np.uint8)
    centre = np.array([half, half], float)
    if shape == "circle":
        c = tuple(int(v * (1 << _SHIFT)) for v in centre)
        r = int(radius * (1 << _SHIFT))
        cv2.circle(mask, c, r, 1, thickness if thickness else -1, cv2.LINE_8, _SHIFT)
    else:
        angle = rng.uniform(0, 2 * math.pi)
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        pts = _polygon(shape, radius, rng) @ rot.T + centre
        pts = np.round(pts * (1 << _SHIFT)).astype(np.int32)[None]
        if thickness:
            cv2.polylines(mask, pts, True, 1, thickness, cv2.LINE_8, _SHIFT)
        else:
            cv2.fillPoly(mask, pts, 1, cv2.LINE_8, shift=_SHIFT)
    return mask.astype(bool)


def random_colour(rng: np.random.Generator, away_from=None) -> np.ndarray:
    """A random RGB colour (float), at least ~70 away from ``away_from`` so the object stays visible."""
    for _ in range(10):
        hsv = np.uint8([[[rng.integers(0, 180), rng.integers(0, 256), rng.integers(40, 256)]]])
        colour = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)
        if away_from is None or np.abs(colour - away_from).sum() > 70:
            return colour
    return 255.0 - np.asarray(away_from, np.float32)


def fill_pattern(
    style: str, shape_hw: Tuple[int, int], bg_mean, rng: np.random.Generator
) -> np.ndarray:
    """The object's pixels (h, w, 3) float: a texture in random colours; the mask decides where it shows."""
    h, w = shape_hw
    c1 = random_colour(rng, bg_mean)
    if style in ("solid", "outline"):
        out = np.empty((h, w, 3), np.float32)
        out[:] = c1
        if style == "solid":  # shading + grain so a solid object is not one flat colour
            out += np.linspace(-1, 1, w, dtype=np.float32)[None, :, None] * np.float32(
                rng.uniform(0, 30)
            )
            out = _add_grain(out, rng, rng.uniform(0, 12))
        return out
    c2 = random_colour(rng, c1)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = max(3.0, min(h, w) / rng.uniform(4, 7))
    if style == "striped":
        a = rng.uniform(0, math.pi)
        first = ((xx * math.cos(a) + yy * math.sin(a)) // (period / 2)) % 2 == 0
    elif style == "checker":
        first = ((xx // (period / 2)) + (yy // (period / 2))) % 2 == 0
    else:
        raise ValueError(f"unknown style {style!r}")
    return np.where(first[:, :, None], c1, c2).astype(np.float32)


def draw_background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Gradient + blotches, then distractors: lines, irregular blobs and text (grain comes last)."""
    # a coarse grid (gradient + random blotches) upsampled: smooth colour variation at little cost
    cell = int(rng.integers(16, 64))
    gh, gw = height // cell + 2, width // cell + 2
    a = rng.uniform(0, 2 * math.pi)
    t = np.linspace(0, math.cos(a), gw)[None, :] + np.linspace(0, math.sin(a), gh)[:, None]
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    c1, c2 = random_colour(rng), random_colour(rng)
    grid = c1 + t[:, :, None] * (c2 - c1) + rng.uniform(-1, 1, (gh, gw, 3)) * rng.uniform(10, 60)
    img = cv2.resize(grid.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    img = np.clip(img, 0, 255).astype(np.uint8)
    _draw_distractors(img, rng)
    return img


def _draw_distractors(img: np.ndarray, rng: np.random.Generator) -> None:
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(0, 16))):
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(img, p1, p2, random_colour(rng).tolist(), int(rng.integers(1, 4)), cv2.LINE_AA)
    for _ in range(
        int(rng.integers(0, 5))
    ):  # irregular blobs: object-like clutter that is no class
        r = rng.uniform(4, 0.15 * min(h, w))
        n = int(rng.integers(7, 14))
        ang = np.sort(rng.uniform(0, 2 * math.pi, n))
        rad = r * rng.uniform(0.35, 1.0, n)
        centre = rng.uniform(0, [w, h])
        pts = np.stack([np.cos(ang) * rad, np.sin(ang) * rad], 1) + centre
        cv2.fillPoly(img, [pts.astype(np.int32)], random_colour(rng).tolist(), cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 3))):
        text = "".join(chr(int(c)) for c in rng.integers(65, 91, int(rng.integers(2, 6))))
        org = (int(rng.integers(0, w)), int(rng.integers(10, h)))
        cv2.putText(
            img,
            text,
            org,
            cv2.FONT_HERSHEY_SIMPLEX,
            rng.uniform(0.3, 1.2),
            random_colour(rng).tolist(),
            int(rng.integers(1, 3)),
            cv2.LINE_AA,
        )


class _Canvas:
    """The image being composed, with a per-pixel map of which object is visible where."""

    def __init__(self, image: np.ndarray):
        self.image = image
        self.owner = np.zeros(image.shape[:2], np.int32)  # 0 = background, k = object k
        self.full_area: List[int] = [0]
        self.visible: List[int] = [0]
        self.windows: List[Tuple[int, int, int, int]] = [(0, 0, 0, 0)]

    def try_place(self, mask: np.ndarray, cx: float, cy: float):
        """The clipped window and mask if placing here keeps every object >= half visible, else None."""
        h, w = self.owner.shape
        mh, mw = mask.shape
        x0, y0 = int(cx) - mw // 2, int(cy) - mh // 2
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + mw, w), min(y0 + mh, h)
        if ix1 <= ix0 or iy1 <= iy0:
            return None
        sub = mask[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
        if sub.sum() < MIN_VISIBLE_FRACTION * mask.sum():
            return None
        covered = np.bincount(self.owner[iy0:iy1, ix0:ix1][sub], minlength=len(self.visible))
        for k in np.nonzero(covered[1:])[0] + 1:
            if self.visible[k] - covered[k] < MIN_VISIBLE_FRACTION * self.full_area[k]:
                return None
        return (ix0, iy0, ix1, iy1), sub, covered, int(mask.sum())

    def paint(self, placement, pixels: np.ndarray) -> None:
        (ix0, iy0, ix1, iy1), sub, covered, full_area = placement
        k = len(self.visible)
        for j in np.nonzero(covered[1:])[0] + 1:
            self.visible[j] -= int(covered[j])
        region = self.image[iy0:iy1, ix0:ix1]
        region[sub] = np.clip(pixels[sub], 0, 255).astype(np.uint8)
        self.owner[iy0:iy1, ix0:ix1][sub] = k
        self.full_area.append(full_area)  # the whole shape, also the part cut off by the border
        self.visible.append(int(sub.sum()))
        self.windows.append((ix0, iy0, ix1, iy1))

    def boxes(self) -> List[List[float]]:
        """Tight XYXY box of each object's visible pixels: pixel columns c0..c1 -> [c0, c1 + 1]."""
        out = []
        for k in range(1, len(self.visible)):
            ix0, iy0, ix1, iy1 = self.windows[k]
            mine = self.owner[iy0:iy1, ix0:ix1] == k
            rows, cols = np.nonzero(mine.any(1))[0], np.nonzero(mine.any(0))[0]
            out.append([ix0 + cols[0], iy0 + rows[0], ix0 + cols[-1] + 1.0, iy0 + rows[-1] + 1.0])
        return out


def draw_image(
    height: int, width: int, num_classes: int, rng: np.random.Generator, max_objects: int = 10
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic image: (uint8 HxWx3 RGB, float32 (N,4) XYXY boxes, int64 (N,) labels)."""
    canvas = _Canvas(draw_background(height, width, rng))
    labels = []
    max_size = max(MIN_OBJECT_SIZE + 1.0, MAX_OBJECT_FRACTION * min(height, width))
    for _ in range(int(rng.integers(1, max_objects + 1))):
        label = int(rng.integers(num_classes))
        _, shape, style = CLASSES[label]
        size = math.exp(rng.uniform(math.log(MIN_OBJECT_SIZE), math.log(max_size)))  # log-uniform
        mask = shape_mask(shape, style, size, rng)
        for _attempt in range(8):
            placement = canvas.try_place(mask, rng.uniform(0, width), rng.uniform(0, height))
            if placement is not None:
                break
        else:
            continue
        (ix0, iy0, ix1, iy1), sub, _, _ = placement
        bg_mean = canvas.image[iy0:iy1, ix0:ix1][sub].mean(0)
        canvas.paint(placement, fill_pattern(style, sub.shape, bg_mean, rng))
        labels.append(label)
    image = _degrade(canvas.image, rng)
    boxes = np.asarray(canvas.boxes(), np.float32).reshape(-1, 4)
    return image, boxes, np.asarray(labels, np.int64)


def _degrade(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera-like nuisance over the whole image: occasional blur, sensor noise."""
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), rng.uniform(0.5, 1.2))
    sigma = rng.uniform(1, 14)  # sensor noise over objects and background alike
    return np.clip(_add_grain(img.astype(np.float32), rng, sigma), 0, 255).astype(np.uint8)


def _add_grain(img: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """``img`` (float32 HxWx3) plus gray gaussian noise (the same on the three channels)."""
    noise = rng.standard_normal(img.shape[:2], dtype=np.float32) * np.float32(sigma)
    return cv2.add(img, cv2.merge([noise, noise, noise]))
