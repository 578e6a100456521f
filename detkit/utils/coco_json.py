"""The COCO JSON checks that datasets (``detkit.data.coco``) and evaluators
(``detkit.evaluation.coco_io``) share: reading the file, integer ids, and annotation ids.

Annotation ids matter to both: pycocotools stores the matched ground-truth id in each detection, so
id 0 reads as "unmatched" and duplicate ids fetch the wrong box -- a silently wrong AP, whether the
file is evaluated directly or a dataset built from it is. Each caller passes the exception type its
users catch (``DataError`` for datasets, ``ValueError`` for evaluation). No torch here: the
evaluation package imports without it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence, Type, Union

import numpy as np

PathLike = Union[str, Path]


def read_json(path: PathLike, what: str, error: Type[Exception] = ValueError) -> Any:
    """The parsed JSON file; ``FileNotFoundError`` or ``error`` naming ``what`` and the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise error(f"{what} file {path} is not valid JSON: {err}") from None


def int_ids(
    values: Sequence[Any], source: str, what: str, error: Type[Exception] = ValueError
) -> np.ndarray:
    """``values`` as int64 (N,); an error naming the first one that is not an integer (bools are not)."""
    array = np.asarray(values) if len(values) else np.zeros(0, np.int64)
    if array.dtype.kind not in "iu" or array.ndim != 1:
        bad = next(
            (i, v)
            for i, v in enumerate(values)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer))
        )
        raise error(f"{source}: {what} must be integers; #{bad[0]} is {bad[1]!r}")
    return array.astype(np.int64)


def check_annotation_ids(
    ids: np.ndarray,
    source: str,
    error: Type[Exception] = ValueError,
    image_ids: Optional[np.ndarray] = None,
) -> None:
    """No annotation id 0 and no id twice; the error names the first offender (and its image id)."""

    def where(k: int) -> str:
        return f"image id {image_ids[k]}" if image_ids is not None else f"annotation #{k}"

    zero = np.flatnonzero(ids == 0)
    if len(zero):
        raise error(
            f"{source}: annotation id 0 ({where(zero[0])}) is not allowed: pycocotools treats id 0 "
            "as 'unmatched' and mis-scores it; renumber from 1"
        )
    uniq, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1].tolist()
        k = first[counts > 1][0]
        listed = ", ".join(str(i) for i in dup[:10]) + (" ..." if len(dup) > 10 else "")
        raise error(
            f"{source}: duplicate annotation id {dup[0]} ({where(k)}); COCO evaluation looks "
            f"annotations up by id, so duplicates are mis-scored; give every annotation its own id "
            f"(duplicate annotation ids {listed})"
        )
