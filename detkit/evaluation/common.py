"""Pieces both evaluators share: image-id bookkeeping, tables, JSON."""

from __future__ import annotations

import logging
import math
from typing import Any, Iterable, Sequence

import numpy as np

from detkit.utils.io import write_json as write_json  # the evaluators' and tools' JSON writer

logger = logging.getLogger("detkit")


def to_numpy(x: Any) -> np.ndarray:
    """A torch tensor (any device) or array-like as a NumPy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def check_processed_ids(processed: Sequence[int], known: Iterable[int], source: str) -> np.ndarray:
    """Sorted unique processed image ids; errors on ids seen twice or unknown to ``source``.

    Each image must be predicted exactly once: a distributed sampler that pads the dataset by
    repeating images would otherwise count those images' detections twice.
    """
    ids = np.asarray(list(processed), np.int64)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1].tolist()
        raise ValueError(
            f"image ids processed more than once: {short_list(dup)}; every image must be "
            "predicted exactly once (a padding DistributedSampler repeats images)"
        )
    known = np.asarray(sorted(set(int(i) for i in known)), np.int64)
    unknown = np.setdiff1d(uniq, known)
    if unknown.size:
        raise ValueError(f"processed image ids not in {source}: {short_list(unknown.tolist())}")
    if 0 < uniq.size < known.size:
        logger.warning(
            "evaluating %d of the %d images in %s (only those processed)",
            uniq.size,
            known.size,
            source,
        )
    return uniq


def short_list(values: Sequence, limit: int = 10) -> str:
    """The first ``limit`` values, comma separated, with a count of the rest."""
    values = list(values)
    more = f" ... ({len(values) - limit} more)" if len(values) > limit else ""
    return ", ".join(str(v) for v in values[:limit]) + more


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return text == "n/a"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain fixed-width table; floats with 3 decimals."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    left = [any(c[i] and not _numeric(c[i]) for c in cells) for i in range(len(headers))]

    def fmt(values: Sequence[str]) -> str:
        return " | ".join(
            v.ljust(w) if lft else v.rjust(w) for v, w, lft in zip(values, widths, left)
        )

    return "\n".join([fmt(headers), "-+-".join("-" * w for w in widths)] + [fmt(r) for r in cells])


def per_class_table(per_class: dict, title: str, columns: int = 3) -> str:
    """Class/AP pairs laid out ``columns`` pairs per row; -1 (no ground truth) shown as 'n/a'."""
    items = [(name, "n/a" if ap < 0 else f"{ap:.3f}") for name, ap in per_class.items()]
    rows = []
    for i in range(0, len(items), columns):
        chunk = items[i : i + columns]
        chunk += [("", "")] * (columns - len(chunk))
        rows.append([v for pair in chunk for v in pair])
    headers = ["class", title] * min(columns, max(len(items), 1))
    return format_table(headers, [r[: len(headers)] for r in rows])
