"""Per-class score thresholds ("operating points"): the file the error analysis writes and inference reads.

The error analysis picks, for each class, the score that maximises F1 and writes it here with
:func:`write_thresholds`; ``Detector.predict(score_thresh=)`` and ``tools/video.py --score-thresh``
read it back with :func:`load_thresholds` as one minimum score per label. The file is JSON::

    {"format": "detkit score thresholds", "version": 1,
     "thresholds": {"cat": 0.62, "dog": 0.48},     # class name -> minimum score, in [0, 1]
     "no_operating_point": ["car"],                # classes without one (no detections or no
                                                   # ground truth): they use "default"
     "default": 0.55,                              # or null: keep the caller's base threshold
     ...}                                          # anything else the analysis records (meta)

A detection is kept when ``score >= threshold[label]``. A class the file does not give a score for
(listed under ``no_operating_point``, or absent) uses ``default`` when the file has one, else the
caller's ``base`` threshold; one log line names those classes.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import numbers
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np

from ..errors import ConfigError
from ..utils.io import write_json

logger = logging.getLogger("detkit")

FORMAT = "detkit score thresholds"
VERSION = 1
_RESERVED = ("format", "version", "thresholds", "no_operating_point", "default")

ThresholdSource = Union[str, os.PathLike, Mapping[str, Any], float, None]


def write_thresholds(
    path: Union[str, os.PathLike],
    thresholds: Mapping[str, Optional[float]],
    meta: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write the thresholds file (atomically) and return its path.

    ``thresholds``: class name -> the class's operating point, or None where the class has none (no
    detections or no ground truth); those are listed under ``"no_operating_point"``.
    ``meta``: extra JSON-serialisable keys stored at the top level (what the analysis was run on,
    the IoU threshold...); ``meta["default"]`` (the overall best-F1 score, or None) becomes the
    file's ``"default"``, the score of the classes without an operating point; without it
    ``"default"`` is null and those classes keep the reader's base threshold.
    Scores must be numbers in [0, 1] (``ConfigError`` otherwise)."""
    meta = dict(meta or {})
    default = meta.pop("default", None)
    clash = sorted(set(meta) & set(_RESERVED))
    if clash:
        raise ConfigError(
            f"score thresholds meta keys {clash} are reserved by the file format "
            f"({', '.join(_RESERVED)}); rename them"
        )
    source = f"score thresholds for {path}"
    scores: Dict[str, float] = {}
    missing = []
    for name, value in thresholds.items():
        if value is None:
            missing.append(str(name))
        else:
            scores[str(name)] = _score(value, f"{source}: class {name!r}")
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "thresholds": scores,
        "no_operating_point": missing,
        "default": None if default is None else _score(default, f"{source}: 'default'"),
        **meta,
    }
    return write_json(doc, path, indent=2)


def load_thresholds(
    source: ThresholdSource, class_names: Sequence[str], base: float = 0.0
) -> Optional[np.ndarray]:
    """Minimum scores per label, a float64 array ``(K,)`` in ``class_names`` order (None for None).

    ``source``: a number (the same threshold for every class); a dict ``{class name: score}``,
    plain or the file format (module docstring); or the path of such a JSON file. Classes the
    source gives no score for use its ``default`` when it has one, else ``base``, and one log
    line names them. A ``ConfigError`` names the source for an unknown class name (with the
    valid ones and a close match), a score that is not a number in [0, 1], and a file that cannot
    be read or is not a thresholds file."""
    if source is None:
        return None
    names = [str(n) for n in class_names]
    if isinstance(source, numbers.Real) and not isinstance(source, bool):
        value = _score(source, "score threshold")
        return np.full(len(names), value, np.float64)
    if isinstance(source, (str, os.PathLike)):
        where = str(source)
        data = _read_file(Path(source))
    elif isinstance(source, Mapping):
        where, data = "score thresholds dict", source
    else:
        raise ConfigError(
            f"score threshold must be a number, a dict {{class name: score}} or a thresholds "
            f"file path; got {type(source).__name__} {source!r}"
        )
    scores, default, no_point = _parse(data, where)
    unknown = [n for n in list(scores) + no_point if n not in names]
    if unknown:
        raise ConfigError(_unknown_message(unknown, names, where))
    fallback = float(base) if default is None else default
    out = np.full(len(names), fallback, np.float64)
    given = {n: s for n, s in scores.items() if s is not None}
    for label, name in enumerate(names):
        if name in given:
            out[label] = given[name]
    fell_back = [n for n in names if n not in given]
    if fell_back:
        logger.info(
            "%s: %d of %d classes have no score threshold there and use %s %g: %s",
            where,
            len(fell_back),
            len(names),
            "its default" if default is not None else "the base threshold",
            fallback,
            ", ".join(fell_back),
        )
    return out


def _read_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"score thresholds file not found: {path} (expected a number or a JSON thresholds "
            "file written by the error analysis)"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise ConfigError(f"cannot read the score thresholds file {path}: {reason}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"score thresholds file {path} is not valid JSON ({e}); expected "
            f'{{"thresholds": {{class name: score}}, ...}} or {{class name: score}}'
        ) from None


def _parse(data: Any, where: str):
    """(class name -> score or None, default or None, no-operating-point names) from a dict."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{where}: expected a JSON object {{class name: score}} or a detkit thresholds file, "
            f"got {type(data).__name__}"
        )
    if "format" in data or "thresholds" in data:
        if data.get("format") != FORMAT:
            raise ConfigError(f"{where}: 'format' is {data.get('format')!r}, expected {FORMAT!r}")
        version = data.get("version")
        if version != VERSION:
            raise ConfigError(
                f"{where}: thresholds file version {version!r}; this detkit reads version {VERSION}"
            )
        table = data.get("thresholds")
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: 'thresholds' must be an object {{class name: score}}")
        no_point = data.get("no_operating_point") or []
        if not isinstance(no_point, list) or not all(isinstance(n, str) for n in no_point):
            raise ConfigError(f"{where}: 'no_operating_point' must be a list of class names")
        raw_default = data.get("default")
        default = None if raw_default is None else _score(raw_default, f"{where}: 'default'")
    else:
        table, no_point, default = data, [], None
    scores = {
        str(name): None if value is None else _score(value, f"{where}: class {name!r}")
        for name, value in table.items()
    }
    return scores, default, list(no_point)


def _score(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{what}: {value!r} is not a number; a score threshold is in [0, 1]")
    value = float(value)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ConfigError(f"{what}: {value!r} is outside [0, 1]; a score threshold is in [0, 1]")
    return value


def _unknown_message(unknown: Sequence[str], names: Sequence[str], where: str) -> str:
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, names, n=1)
        parts.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
    return (
        f"{where}: unknown class name(s) {', '.join(parts)}; the model's classes are: "
        f"{', '.join(names)}"
    )
