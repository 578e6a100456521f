"""The error-analysis report: one folder a person can open and a program can read.

:func:`write_report` turns the analysis dict (see ``detkit.analysis``) into::

    output_dir/
      analysis.json           the dict itself, the machine-readable result
      per_class_ap.csv        class x area AP            (fractions; -1 = no ground truth)
      coco_breakdown.csv      class x area x error type  (COCO analyze() APs)
      operating_points.csv    per-class best-F1 score, precision, recall, F1
      confusion_matrix.csv    counts, rows = ground truth, columns = detected as
      tide.csv                TIDE dAP per error type
      compare_per_class_ap.csv  (only when two result files are compared)
      figures/*.png           the matplotlib figures (``detkit.analysis.plots``)
      gallery/*.jpg           the error galleries (``detkit.analysis.gallery``), when given
      report.html             one self-contained page

``report.html`` needs no network, no JavaScript and nothing beside it: every figure and gallery
image is embedded as a data URI (the gallery as JPEG, to keep the page small), so the page can be
mailed or moved on its own; each embedded figure also links to its PNG under ``figures/`` for the
full-size view when the folder is kept together. Every string that comes from the data (class
names, file names, notes) is HTML-escaped: a class called ``<b>&x`` is shown, not interpreted.

The page opens with the settings, COCO's twelve numbers and a few sentences saying what fails,
derived from the numbers (:func:`detkit.analysis.summary.summarize`), then one section per
analysis. The CSV files are :func:`detkit.analysis.tables.write_csvs`'s.
"""

from __future__ import annotations

import base64
import html
import logging
import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..utils.io import atomic_write_text, ensure_output_dir, write_json
from ..version import __version__
from . import plots
from .gallery import ERROR_NAMES, ERROR_TYPES, draw_gallery_entries
from .plots import AREAS, BREAKDOWN_LABELS, BREAKDOWN_TYPES, TIDE_MAIN, TIDE_SPECIAL, valid
from .summary import TIDE_NAMES, percent, summarize, top_confusions
from .tables import CSV_NAMES, PathLike, write_csvs

logger = logging.getLogger("detkit")

METRIC_ROWS = (
    ("AP", "AP50", "AP75", "APs", "APm", "APl"),
    ("AR1", "AR10", "AR100", "ARs", "ARm", "ARl"),
)


def write_report(
    analysis: Mapping,
    output_dir: PathLike,
    gallery_entries: Optional[Sequence[Mapping]] = None,
) -> Path:
    """Write the analysis folder (JSON, CSVs, figures, gallery, ``report.html``; see the module
    docstring) and return the path of ``report.html``. ``gallery_entries`` are
    :func:`detkit.analysis.gallery.build_gallery`'s; without them the page has no gallery."""
    out = ensure_output_dir(output_dir)
    write_json(_jsonable(analysis), out / "analysis.json")
    csvs = write_csvs(analysis, out)
    figures = plots.plot_all(analysis, out / "figures")
    # a report written again into the same folder: files of the earlier run that this one does
    # not write (a compare figure, last run's gallery) would sit beside it and mislead
    _remove_stale(out, CSV_NAMES, csvs)
    _remove_stale(out / "figures", FIGURE_NAMES, [p for ps in figures.values() for p in ps])
    _remove_stale(out / "gallery", None, [])
    drawn = []
    if gallery_entries:
        drawn = draw_gallery_entries(gallery_entries, out / "gallery", fmt="jpg")
    page = render_html(analysis, figures, drawn, out)
    path = atomic_write_text(page, out / "report.html")
    logger.info("analysis report written: %s", path)
    return path


FIGURE_NAMES = (
    "pr_overall.png",
    "pr_per_class.png",
    "coco_breakdown.png",
    "coco_breakdown_classes.png",
    "tide.png",
    "confusion_matrix.png",
    "operating_points.png",
    "compare.png",
)
GALLERY_FILE = re.compile(r"^(worst|Cls|Loc|Both|Dupe|Bkg|Miss)_\d+_img-?\d+\.(png|jpg)$")


def _remove_stale(folder: Path, names: Optional[Sequence[str]], written: Sequence[Path]) -> None:
    """Remove the files an earlier report left in ``folder``: those of ``names`` (or, for None,
    those named like gallery images) that this run did not write. Nothing else is touched."""
    if not folder.is_dir():
        return
    keep = {Path(p).name for p in written}
    for path in folder.iterdir():
        ours = path.name in names if names is not None else GALLERY_FILE.match(path.name)
        if ours and path.name not in keep and path.is_file():
            path.unlink()


# ---------------------------------------------------------------------------------------------
# JSON


def _jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars / arrays, tuples and paths turned into plain JSON types, and
    NaN / infinity into null (strict JSON, which every reader accepts)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ---------------------------------------------------------------------------------------------
# HTML

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #222; background: #fafafa; line-height: 1.4; }
main { max-width: 1200px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { margin: 8px 0 4px; font-size: 26px; }
h2 { margin-top: 36px; border-bottom: 2px solid #ddd; padding-bottom: 4px; font-size: 21px; }
h3 { font-size: 16px; margin: 20px 0 8px; }
nav { font-size: 14px; margin: 8px 0 16px; }
nav a { margin-right: 12px; color: #1f5fa8; text-decoration: none; white-space: nowrap; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; background: #fff; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; }
td.name, th.name { text-align: left; max-width: 360px; overflow-wrap: anywhere; }
.wide { overflow-x: auto; max-width: 100%; }
.metrics td { font-size: 17px; font-weight: 600; min-width: 56px; text-align: center; }
.metrics th { text-align: center; }
.summary { background: #fff8e5; border-left: 4px solid #f0b400; padding: 8px 16px 8px 28px; }
.summary li { margin: 4px 0; }
figure { margin: 12px 0; }
figure.fig img { max-width: 100%; height: auto; border: 1px solid #ddd; background: #fff; }
figcaption { font-size: 12px; color: #555; overflow-wrap: anywhere; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr));
           gap: 12px; }
.gallery figure { margin: 0; background: #fff; border: 1px solid #ddd; padding: 4px; }
.gallery img { width: 100%; height: 340px; object-fit: contain; background: #222;
               display: block; }
.muted { color: #777; font-size: 12px; }
dl.settings { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px;
              font-size: 13px; margin: 8px 0; }
dl.settings dt { color: #666; }
dl.settings dd { margin: 0; overflow-wrap: anywhere; }
"""


def esc(x: Any) -> str:
    """``x`` as HTML text: every string from the data goes through here."""
    return html.escape(str(x), quote=True)


def _data_uri(path: Path) -> str:
    mime = "image/jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else "image/png"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _figure_html(path: Path, out_dir: Path, caption: str = "") -> str:
    rel = path.relative_to(out_dir).as_posix() if path.is_relative_to(out_dir) else path.name
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return (
        f'<figure class="fig"><a href="{esc(rel)}"><img src="{_data_uri(path)}" '
        f'alt="{esc(path.stem)}"></a>{cap}</figure>'
    )


def _frac_cell(x: Any, shade: bool = False) -> str:
    """A table cell with a fraction shown as a percentage (``n/a`` for -1 / None)."""
    if not valid(x):
        return '<td class="muted">n/a</td>'
    style = ""
    if shade:  # red (0) .. green (1), light enough to read the number on
        style = f' style="background: hsl({120 * min(1.0, float(x)):.0f}, 65%, 85%)"'
    return f"<td{style}>{percent(x)}</td>"


def _num(x: Any, digits: int = 2) -> str:
    if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x):
        return f"{x:.{digits}f}"
    return "n/a"


def _table(header: Sequence[str], rows: Sequence[str], cls: str = "", names: int = 1) -> str:
    """A table; the first ``names`` columns hold text (left-aligned), the rest numbers."""
    if not rows:
        return ""
    head = "".join(
        f'<th class="name">{esc(h)}</th>' if i < names else f"<th>{esc(h)}</th>"
        for i, h in enumerate(header)
    )
    klass = f' class="{cls}"' if cls else ""
    return (
        f'<div class="wide"><table{klass}><thead><tr>{head}</tr></thead><tbody>'
        + "".join(rows)
        + "</tbody></table></div>"
    )


def _settings_html(analysis: Mapping) -> str:
    s = analysis.get("settings") or {}
    items = [
        ("ground truth", s.get("dataset")),
        ("results", s.get("results")),
        ("rules", s.get("rules")),
        ("images", s.get("n_images")),
        ("detections", s.get("n_detections")),
        ("maxDets", s.get("max_dets")),
        (
            "area ranges",
            ", ".join(
                f"{k} [{', '.join(f'{x:g}' for x in v)}]"
                for k, v in (s.get("area_ranges") or {}).items()
            )
            or None,
        ),
        (
            "confusion matrix",
            f"score >= {s.get('score_thresh'):.3g}, IoU >= {s.get('iou_thresh')}"
            if s.get("score_thresh") is not None
            else None,
        ),
        ("compared with", s.get("compare")),
    ]
    body = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items if v is not None)
    return f'<dl class="settings">{body}</dl>'


def _metrics_html(analysis: Mapping) -> str:
    m = analysis.get("metrics") or {}
    rows = []
    for names in METRIC_ROWS:
        head = "".join(f"<th>{esc(n)}</th>" for n in names)
        cells = "".join(f"<td>{percent(m.get(n))}</td>" for n in names)
        rows.append(f"<tr>{head}</tr><tr>{cells}</tr>")
    return f'<table class="metrics">{"".join(rows)}</table>'


def _figures(figures: Mapping, key: str, out_dir: Path) -> str:
    return "".join(_figure_html(p, out_dir) for p in figures.get(key) or [])


def _breakdown_html(analysis: Mapping, figures: Mapping, out_dir: Path) -> str:
    bd = (analysis.get("coco_breakdown") or {}).get("all") or {}
    rows = [
        f'<tr><td class="name">{esc(area)}</td>'
        + "".join(_frac_cell((bd.get(area) or {}).get(t)) for t in BREAKDOWN_TYPES)
        + "</tr>"
        for area in AREAS
        if bd.get(area)
    ]
    figs = _figures(figures, "coco_breakdown", out_dir)
    if not rows and not figs:
        return ""
    explain = "".join(f"<li>{esc(BREAKDOWN_LABELS[t])}</li>" for t in BREAKDOWN_TYPES)
    return (
        figs
        + "<h3>All classes, AP (%) after each step</h3>"
        + _table(["area", *BREAKDOWN_TYPES], rows)
        + f'<ul class="muted">{explain}</ul>'
    )


def _tide_html(analysis: Mapping, figures: Mapping, out_dir: Path) -> str:
    tide = analysis.get("tide") or {}
    rows = []
    for group, types in (("main", TIDE_MAIN), ("special", TIDE_SPECIAL)):
        values = tide.get(group) or {}
        for t in [t for t in types if t in values] + [t for t in values if t not in types]:
            rows.append(
                f'<tr><td class="name">{esc(t)}</td><td class="name">'
                f"{esc(TIDE_NAMES.get(t, ''))}</td><td>{_num(values[t])}</td></tr>"
            )
    ap50 = tide.get("ap50")
    base = f"<p>AP50 (TIDE's base): {_num(ap50, 1)}</p>" if ap50 is not None else ""
    return (
        _figures(figures, "tide", out_dir)
        + base
        + _table(["type", "what", "dAP (points)"], rows, names=2)
    )


def _confusion_html(analysis: Mapping, figures: Mapping, out_dir: Path) -> str:
    cm = analysis.get("confusion_matrix") or {}
    if not cm.get("labels") or cm.get("counts") is None:
        return ""
    conf = top_confusions(analysis, 20)
    rows = [
        f'<tr><td class="name">{esc(c["ground_truth"])}</td>'
        f'<td class="name">{esc(c["detected_as"])}</td><td>{c["count"]}</td>'
        + (_frac_cell(c["fraction"]) if c["fraction"] is not None else "<td>n/a</td>")
        + "</tr>"
        for c in conf
    ]
    parts = [_figures(figures, "confusion_matrix", out_dir), "<h3>Top confusions</h3>"]
    parts.append(
        _table(["ground truth", "detected as", "count", "% of the ground truth"], rows, names=2)
        if rows
        else "<p>No class-to-class confusions.</p>"
    )
    labels = list(cm.get("labels") or [])
    if len(labels) >= 2 and cm.get("counts") is not None:
        counts = np.asarray(cm["counts"], dtype=np.float64).reshape(len(labels), len(labels))
        k = len(labels) - 1
        prec, rec = cm.get("precision") or {}, cm.get("recall") or {}
        rows = [
            f'<tr><td class="name">{esc(n)}</td><td>{int(counts[i].sum())}</td>'
            f"<td>{int(counts[i, k])}</td><td>{int(counts[:, i].sum())}</td>"
            f"<td>{int(counts[k, i])}</td>{_frac_cell(prec.get(n))}{_frac_cell(rec.get(n))}</tr>"
            for i, n in enumerate(labels[:k])
        ]
        parts.append("<h3>Per class at this threshold</h3>")
        parts.append(
            _table(
                [
                    "class",
                    "objects",
                    "missed",
                    "detections",
                    "background FP",
                    "precision %",
                    "recall %",
                ],
                rows,
            )
        )
    return "".join(parts)


def _operating_html(analysis: Mapping, figures: Mapping, out_dir: Path) -> str:
    ops = analysis.get("operating_points") or {}
    rows = [
        f'<tr><td class="name">{esc(n)}</td><td>{_num((v or {}).get("score"), 3)}</td>'
        f"{_frac_cell((v or {}).get('precision'))}{_frac_cell((v or {}).get('recall'))}"
        f"{_frac_cell((v or {}).get('f1'))}</tr>"
        for n, v in ops.items()
    ]
    return _figures(figures, "operating_points", out_dir) + _table(
        ["class", "score threshold", "precision %", "recall %", "F1 %"], rows
    )


def _per_class_ap_html(analysis: Mapping) -> str:
    per = analysis.get("per_class_area_ap") or {}
    rows = [
        f'<tr><td class="name">{esc(n)}</td>'
        + "".join(_frac_cell((v or {}).get(a), shade=True) for a in AREAS)
        + "</tr>"
        for n, v in per.items()
    ]
    return _table(["class", *(f"AP {a} %" for a in AREAS)], rows)


def _compare_html(analysis: Mapping, figures: Mapping, out_dir: Path) -> str:
    cmp = analysis.get("compare") or {}
    parts = [
        f"<p>This: {esc((analysis.get('settings') or {}).get('results'))}<br>"
        f"Other: {esc(cmp.get('other'))}</p>",
        _figures(figures, "compare", out_dir),
    ]
    other_metrics = cmp.get("metrics_other") or {}
    if other_metrics:
        mine = analysis.get("metrics") or {}
        rows = []
        for k in (*METRIC_ROWS[0], *METRIC_ROWS[1]):
            a, b = mine.get(k), other_metrics.get(k)
            rows.append(
                f'<tr><td class="name">{esc(k)}</td>{_frac_cell(a)}{_frac_cell(b)}'
                f"<td>{_signed(_diff(a, b))}</td></tr>"
            )
        parts += ["<h3>COCO metrics</h3>", _table(["metric", "this %", "other %", "delta"], rows)]
    per = cmp.get("per_class_ap") or {}
    if per:
        rows = [
            f'<tr><td class="name">{esc(n)}</td>{_frac_cell(v.get("this"))}'
            f"{_frac_cell(v.get('other'))}<td>{_signed(v.get('delta'))}</td></tr>"
            for n, v in per.items()
        ]
        parts += ["<h3>Per-class AP</h3>", _table(["class", "this %", "other %", "delta"], rows)]
    for key, title, show in (
        ("tide_delta", "TIDE dAP delta", _num),  # already in AP points
        ("breakdown_delta", "COCO breakdown delta (all classes, area all)", _signed),
    ):
        values = cmp.get(key) or {}
        if values:
            rows = [
                f'<tr><td class="name">{esc(t)}</td><td>{show(v)}</td></tr>'
                for t, v in values.items()
            ]
            parts += [
                f"<h3>{esc(title)}, this - other</h3>",
                _table(["type", "delta (AP points)"], rows),
            ]
    for key, title in (
        ("images_this_better", "Images where this one makes fewer errors"),
        ("images_other_better", "Images where the other makes fewer errors"),
    ):
        items = list(cmp.get(key) or [])[:15]
        if items:
            rows = [
                f'<tr><td class="name">{esc(i.get("image_id"))}</td>'
                f"<td>{esc(i.get('this_errors'))}</td><td>{esc(i.get('other_errors'))}</td></tr>"
                for i in items
            ]
            parts += [
                f"<h3>{esc(title)}</h3>",
                _table(["image id", "errors (this)", "errors (other)"], rows),
            ]
    return "".join(parts)


def _diff(a: Any, b: Any) -> Optional[float]:
    return float(a) - float(b) if valid(a) and valid(b) else None


def _signed(x: Any) -> str:
    if isinstance(x, (int, float)) and math.isfinite(x):
        return f"{100 * x:+.1f}"
    return "n/a"


def _gallery_html(drawn: Sequence[Tuple[Mapping, Path]]) -> str:
    if not drawn:
        return ""
    parts = []
    groups = [("worst", "Images with the most errors")]
    groups += [(t, f"{t}: {ERROR_NAMES[t]}") for t in ERROR_TYPES]
    for kind, title in groups:
        items = [(e, p) for e, p in drawn if e.get("kind") == kind]
        if not items:
            continue
        figs = "".join(
            f'<figure><img src="{_data_uri(p)}" alt="{esc(e.get("title", ""))}" loading="lazy">'
            f"<figcaption><b>{esc(e.get('title', ''))}</b><br>{esc(e.get('caption', ''))}"
            "</figcaption></figure>"
            for e, p in items
        )
        parts.append(f'<h3>{esc(title)}</h3><div class="gallery">{figs}</div>')
    key = (
        '<p class="muted">Dashed light blue: ground truth. Green: true positives. Red: false '
        "positives, labelled with their error type. Dashed magenta: missed objects. In the "
        "galleries of one error type, that error has the thick line and only it and its object "
        "are labelled.</p>"
    )
    return key + "".join(parts)


def render_html(
    analysis: Mapping,
    figures: Mapping[str, Sequence[Path]],
    gallery: Sequence[Tuple[Mapping, Path]],
    out_dir: PathLike,
) -> str:
    """The report page as a string: ``figures`` as :func:`detkit.analysis.plots.plot_all` returns
    them, ``gallery`` as ``(entry, image path)`` pairs; images are embedded, links relative to
    ``out_dir``."""
    out_dir = Path(out_dir)
    s = analysis.get("settings") or {}
    title = f"Detection error analysis: {plots.short_path(s.get('results') or 'results')}"
    sections: List[Tuple[str, str, str]] = [
        ("pr", "PR curves", _figures(figures, "pr_curves", out_dir)),
        ("breakdown", "COCO breakdown", _breakdown_html(analysis, figures, out_dir)),
        ("tide", "TIDE", _tide_html(analysis, figures, out_dir)),
        ("confusion", "Confusion matrix", _confusion_html(analysis, figures, out_dir)),
        ("operating", "Operating points", _operating_html(analysis, figures, out_dir)),
        ("per-class", "AP per class and size", _per_class_ap_html(analysis)),
    ]
    if analysis.get("compare"):
        sections.append(("compare", "Comparison", _compare_html(analysis, figures, out_dir)))
    if gallery:
        sections.append(("gallery", "Galleries", _gallery_html(gallery)))
    notes = analysis.get("notes") or []
    if notes:
        sections.append(
            ("notes", "Notes", "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
        )
    summary = "".join(f"<li>{esc(line)}</li>" for line in summarize(analysis))
    nav = "".join(f'<a href="#{sid}">{esc(name)}</a>' for sid, name, _ in sections)
    missing = '<p class="muted">Not available in this analysis.</p>'
    body = "".join(
        f'<section id="{sid}"><h2>{esc(name)}</h2>{content or missing}</section>'
        for sid, name, content in sections
    )
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>{esc(title)}</h1>"
        f'<p class="muted">detkit {esc(__version__)}, written {esc(stamp)}</p>'
        + _settings_html(analysis)
        + _metrics_html(analysis)
        + f"<nav>{nav}</nav>"
        + f'<h2 id="summary">What fails</h2><ul class="summary">{summary}</ul>'
        + body
        + "</main></body></html>\n"
    )
