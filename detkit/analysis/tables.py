"""The tables of the error-analysis report as CSV files, one per analysis that has data.

:func:`write_csvs` writes them from the analysis dict (see ``detkit.analysis``) with the numbers as
in ``analysis.json``; ``CSV_NAMES`` are every name it may write, so that the report
(``detkit.analysis.report``) can remove those an earlier run left behind.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

from ..utils.io import atomic_write_text
from .plots import AREAS, BREAKDOWN_TYPES

PathLike = Union[str, Path]
CSV_NAMES = (
    "per_class_ap.csv",
    "coco_breakdown.csv",
    "operating_points.csv",
    "confusion_matrix.csv",
    "tide.csv",
    "compare_per_class_ap.csv",
)


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


def write_csvs(analysis: Mapping, out_dir: PathLike) -> List[Path]:
    """The analysis' tables as CSV files in ``out_dir`` (those with data); return their paths.
    Numbers are written as in ``analysis.json``: AP as fractions, -1 where a class has no ground
    truth, an empty cell where a value is not available."""
    out_dir = Path(out_dir)
    tables: Dict[str, Tuple[Sequence[str], List[list]]] = {}

    per = analysis.get("per_class_area_ap") or {}
    if per:
        rows = [[n] + [(per[n] or {}).get(a) for a in AREAS] for n in per]
        tables["per_class_ap.csv"] = (["class", *AREAS], rows)

    bd = analysis.get("coco_breakdown") or {}
    if bd:
        rows = []
        for name, areas in bd.items():
            for area in AREAS:
                cell = (areas or {}).get(area)
                if cell is not None:
                    rows.append([name, area] + [cell.get(t) for t in BREAKDOWN_TYPES])
        tables["coco_breakdown.csv"] = (["class", "area", *BREAKDOWN_TYPES], rows)

    ops = analysis.get("operating_points") or {}
    if ops:
        keys = ("score", "precision", "recall", "f1")
        rows = [[n] + [(ops[n] or {}).get(k) for k in keys] for n in ops]
        tables["operating_points.csv"] = (["class", *keys], rows)

    cm = analysis.get("confusion_matrix") or {}
    if cm.get("labels") and cm.get("counts") is not None:
        labels = list(cm["labels"])
        rows = [[label] + list(row) for label, row in zip(labels, cm["counts"])]
        tables["confusion_matrix.csv"] = (["ground truth \\ detected", *labels], rows)

    tide = analysis.get("tide") or {}
    if tide:
        rows = [["main", t, v] for t, v in (tide.get("main") or {}).items()]
        rows += [["special", t, v] for t, v in (tide.get("special") or {}).items()]
        if tide.get("ap50") is not None:
            rows.append(["base", "AP50", tide["ap50"]])
        tables["tide.csv"] = (["group", "type", "dAP"], rows)

    cmp = analysis.get("compare") or {}
    if cmp.get("per_class_ap"):
        rows = [
            [n, v.get("this"), v.get("other"), v.get("delta")]
            for n, v in cmp["per_class_ap"].items()
        ]
        tables["compare_per_class_ap.csv"] = (["class", "this", "other", "delta"], rows)

    return [
        atomic_write_text(_csv_text(header, rows), out_dir / name)
        for name, (header, rows) in tables.items()
    ]
