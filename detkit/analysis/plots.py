"""The figures of the error-analysis report, drawn from the analysis dict (``analysis.json``).

Each function reads only the analysis dict, writes one or more PNGs and returns their paths, so the
report (``detkit.analysis.report``) and a user at a prompt get the same pictures. Figures are made
with ``matplotlib.figure.Figure`` and the Agg canvas directly, never through ``pyplot``: no global
figure registry to leak into, no GUI backend, safe in threads and in processes without a display.

Every figure carries a grey footer with the settings it was computed under (dataset, rules, IoU,
score threshold, maxDets, area range), so a PNG copied into a slide still says what it shows.

Values may be missing in the dict (``None``) and COCO writes -1 where a class has no ground truth:
such entries are drawn as "n/a" (or left out of a curve plot) instead of failing the whole report.
"""

from __future__ import annotations

import io
import logging
import math
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

from ..errors import WriteError
from ..utils.io import atomic_write_bytes

logger = logging.getLogger("detkit")

PathLike = Union[str, Path]

AREAS = ("all", "small", "medium", "large")
BREAKDOWN_TYPES = ("C75", "C50", "Loc", "Sim", "Oth", "BG", "FN")
TIDE_MAIN = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
TIDE_SPECIAL = ("FalsePos", "FalseNeg")
# the colours of COCO's analyze() figure (cocoapi's MATLAB code), one per breakdown curve
BREAKDOWN_COLORS = {
    "C75": (0.31, 0.51, 0.74),
    "C50": (0.75, 0.31, 0.30),
    "Loc": (0.36, 0.90, 0.38),
    "Sim": (0.50, 0.39, 0.64),
    "Oth": (1.00, 0.60, 0.00),
    "BG": (0.95, 0.85, 0.30),
    "FN": (0.85, 0.85, 0.85),
}
BREAKDOWN_LABELS = {
    "C75": "C75: PR at IoU .75",
    "C50": "C50: PR at IoU .50",
    "Loc": "Loc: localisation errors ignored (IoU .10)",
    "Sim": "Sim: supercategory confusions removed",
    "Oth": "Oth: all class confusions removed",
    "BG": "BG: background false positives removed",
    "FN": "FN: all false negatives removed",
}
TIDE_COLORS = {
    "Cls": "#d62728",
    "Loc": "#ff7f0e",
    "Both": "#8c564b",
    "Dupe": "#9467bd",
    "Bkg": "#7f7f7f",
    "Miss": "#1f77b4",
    "FalsePos": "#e377c2",
    "FalseNeg": "#17becf",
}
DPI = 100
RECALL = np.linspace(0.0, 1.0, 101)


# ---------------------------------------------------------------------------------------------
# helpers


def text(s: Any) -> str:
    """``s`` as matplotlib text shown literally: a ``$`` in a class name would start mathtext."""
    return str(s).replace("$", r"\$")


def valid(x: Any) -> bool:
    """A real number that is not COCO's -1 "no ground truth" marker, NaN or None."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0


def fmt_frac(x: Any, digits: int = 3) -> str:
    """A fraction as COCO prints it (``.512``), or ``n/a``."""
    if not valid(x):
        return "n/a"
    return f"{x:.{digits}f}".lstrip("0") if x < 1 else f"{x:.{digits - 1}f}"


def short_path(path: Any) -> str:
    """The last two parts of a path (``r50/detections.json``): enough to tell runs apart."""
    parts = Path(str(path)).parts
    return "/".join(parts[-2:]) if len(parts) >= 2 and parts[-2] != "/" else str(path)


def settings_stamp(analysis: Mapping, **extra: Any) -> str:
    """One line naming the settings a figure was computed under (dataset, rules, maxDets, and the
    IoU / score threshold / area given in ``extra``)."""
    s = analysis.get("settings") or {}
    parts = [f"dataset: {Path(str(s.get('dataset') or '?')).name}"]
    if s.get("results"):
        parts.append(f"results: {short_path(s['results'])}")
    parts.append(f"rules: {s.get('rules') or '?'}")
    for key, value in extra.items():
        if value is not None:
            parts.append(f"{key}: {value}")
    if s.get("max_dets") is not None:
        parts.append(f"maxDets: {s['max_dets']}")
    return text(STAMP_SEP.join(parts))


def _figure(width: float, height: float, layout: Optional[str] = "constrained") -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


STAMP_SEP = "  |  "


def _finish(fig: Figure, title: str, stamp: str) -> None:
    """Title on top; the settings stamp as the footer, wrapped at the separators to the figure's
    width (a long results path must not run off a narrow figure)."""
    title_chars = int(fig.get_figwidth() * 10)  # ~10 characters per inch at 12 points
    fig.suptitle("\n".join(textwrap.wrap(text(title), title_chars)) or " ", fontsize=12)
    width_chars = int(fig.get_figwidth() * 17)  # ~17 characters per inch at 7 points
    lines, line = [], ""
    for part in stamp.split(STAMP_SEP):
        candidate = f"{line}{STAMP_SEP}{part}" if line else part
        if line and len(candidate) > width_chars:
            lines.append(line)
            line = part
        else:
            line = candidate
    lines.append(line)
    fig.supxlabel("\n".join(lines), fontsize=7, color="0.4")


def save_figure(fig: Figure, path: PathLike) -> Path:
    """Render ``fig`` to PNG and write it atomically (a half-written PNG never sits in a report)."""
    buf = io.BytesIO()
    # zlib level 1: a report of 80 classes spends most of its PNG time compressing at the default
    # level 6, for files only about a quarter smaller
    fig.savefig(buf, format="png", dpi=DPI, pil_kwargs={"compress_level": 1})
    return atomic_write_bytes(buf.getvalue(), path)


def _curve(values: Any) -> Optional[np.ndarray]:
    """A 101-point precision curve as an array, or None when missing or all -1 (no ground truth)."""
    if values is None:
        return None
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size != RECALL.size or not np.any(arr >= 0):
        return None
    return np.where(arr >= 0, arr, 0.0)


def class_names(analysis: Mapping) -> List[str]:
    """The class names in the analysis, in the order of ``metrics.per_class`` (then any others)."""
    names: List[str] = []
    for source in (
        (analysis.get("metrics") or {}).get("per_class") or {},
        analysis.get("per_class_area_ap") or {},
        analysis.get("operating_points") or {},
    ):
        names.extend(n for n in source if n not in names)
    return names


def _grid(n: int, widen: float = 1.3) -> tuple:
    """Rows and columns for ``n`` panels, a little wider than tall."""
    cols = max(1, min(n, int(math.ceil(math.sqrt(n * widen)))))
    return int(math.ceil(n / cols)), cols


# ---------------------------------------------------------------------------------------------
# PR curves


def plot_pr_curves(
    analysis: Mapping,
    out_dir: PathLike,
    classes: Optional[Sequence[str]] = None,
    max_classes: int = 30,
) -> List[Path]:
    """Precision/recall curves at IoU .50 and .75: ``pr_overall.png`` (all classes averaged) and
    ``pr_per_class.png`` (small multiples, one panel per class with both IoUs).

    ``classes`` picks the panels; by default all classes, or the ``max_classes`` with the lowest
    AP when there are more (the ones a failure analysis is about), said in the title."""
    out_dir = Path(out_dir)
    curves = analysis.get("pr_curves") or {}
    ious = [k for k in ("iou_0.50", "iou_0.75") if k in curves]
    if not ious:
        return []
    styles = {"iou_0.50": ("#1f77b4", "-"), "iou_0.75": ("#d62728", "--")}
    paths = []

    fig = _figure(6.5, 5.0)
    ax = fig.add_subplot()
    for key in ious:
        c = _curve(curves[key].get("all"))
        if c is None:
            continue
        color, ls = styles.get(key, ("k", "-"))
        iou = key.split("_", 1)[1]
        ax.plot(RECALL, c, color=color, ls=ls, lw=2, label=f"IoU {iou}  [{fmt_frac(c.mean())}]")
    _pr_axes(ax)
    ax.legend(loc="lower left", fontsize=9)
    stamp = settings_stamp(analysis, IoU=".50 / .75", area="all")
    _finish(fig, "Precision / recall, all classes", stamp)
    paths.append(save_figure(fig, out_dir / "pr_overall.png"))

    per_class_ap = (analysis.get("metrics") or {}).get("per_class") or {}
    names = [n for n in class_names(analysis) if any(n in curves[k] for k in ious)]
    title = "Precision / recall per class (IoU .50 solid, .75 dashed)"
    if classes is not None:
        names = [n for n in classes if n in names]
    elif len(names) > max_classes:
        # classes without ground truth (AP -1) sort last
        ranked = sorted(names, key=lambda n: _ap_key(per_class_ap.get(n)))
        names = ranked[:max_classes]
        title += f": the {max_classes} lowest-AP classes of {len(class_names(analysis))}"
    if names:
        rows, cols = _grid(len(names))
        width, height = max(6.0, 2.1 * cols), 1.9 * rows + 1.2
        # a fixed grid instead of the constrained layout, whose solver dominates the time of
        # many panels: margins in inches for the title (top) and the settings footer (bottom)
        fig = _figure(width, height, layout=None)
        fig.subplots_adjust(
            left=0.45 / width,
            right=1 - 0.15 / width,
            top=1 - 0.65 / height,
            bottom=0.75 / height,
            hspace=0.45,
            wspace=0.12,
        )
        axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
        for i, ax in enumerate(axes.flat):
            if i >= len(names):
                ax.set_axis_off()
                continue
            name = names[i]
            drawn = False
            for key in ious:
                c = _curve(curves[key].get(name))
                if c is not None:
                    color, ls = styles.get(key, ("k", "-"))
                    ax.plot(RECALL, c, color=color, ls=ls, lw=1.3)
                    drawn = True
            if not drawn:
                ax.text(0.5, 0.5, "no ground truth", ha="center", va="center", fontsize=8)
            ap = per_class_ap.get(name)
            ax.set_title(f"{text(name)} [{fmt_frac(ap)}]", fontsize=8)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            # three fixed ticks per axis: tick layout is most of the drawing time of 30 panels
            ax.set_xticks([0, 0.5, 1])
            ax.set_yticks([0, 0.5, 1])
            ax.tick_params(labelsize=6)
            if i + cols >= len(names):  # the lowest panel of its column: it carries the x ticks
                ax.xaxis.set_tick_params(labelbottom=True)
            ax.grid(alpha=0.3)
        _finish(fig, title, stamp)
        paths.append(save_figure(fig, out_dir / "pr_per_class.png"))
    return paths


def _ap_key(ap: Any) -> tuple:
    return (0, float(ap)) if valid(ap) else (1, 0.0)


def _pr_axes(ax) -> None:
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(alpha=0.3)


# ---------------------------------------------------------------------------------------------
# COCO breakdown (analyze())


def plot_coco_breakdown(analysis: Mapping, out_dir: PathLike) -> List[Path]:
    """COCO's analyze() figure, one panel per area: the PR curves C75 .. FN stacked and filled,
    each with its AP in the legend (``[.512] C75``); and ``coco_breakdown_classes.png``, a class
    x error-type heatmap of the area-``all`` breakdown APs (how far each fix takes each class)."""
    out_dir = Path(out_dir)
    paths = []
    curves = analysis.get("coco_breakdown_curves") or {}
    table = analysis.get("coco_breakdown") or {}
    areas = [a for a in AREAS if curves.get(a)]
    if areas:
        rows, cols = _grid(len(areas), widen=1.0)
        fig = _figure(5.2 * cols, 4.3 * rows + 0.6)
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax, area in zip(axes.flat, areas):
            _breakdown_panel(ax, curves[area], (table.get("all") or {}).get(area) or {})
            ax.set_title(f"overall, area {area}", fontsize=10)
        for ax in list(axes.flat)[len(areas) :]:
            ax.set_axis_off()
        _finish(fig, "COCO error breakdown", settings_stamp(analysis, IoU=".75 / .50 / .10"))
        paths.append(save_figure(fig, out_dir / "coco_breakdown.png"))

    names = [n for n in table if n != "all"]
    if names:
        types = list(BREAKDOWN_TYPES)
        data = np.full((len(names), len(types)), np.nan)
        for i, name in enumerate(names):
            cell = (table[name] or {}).get("all") or {}
            for j, t in enumerate(types):
                if valid(cell.get(t)):
                    data[i, j] = cell[t]
        fig = _figure(7.0, max(3.0, 0.22 * len(names) + 1.8))
        ax = fig.add_subplot()
        cmap = _cmap("viridis")
        im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(types)), types, fontsize=9)
        fs = _tick_fontsize(len(names))
        ax.set_yticks(range(len(names)), [text(n) for n in names], fontsize=fs)
        if len(names) <= 30:
            for i in range(len(names)):
                for j in range(len(types)):
                    v = data[i, j]
                    label = "n/a" if np.isnan(v) else fmt_frac(v, 2)
                    ax.text(
                        j,
                        i,
                        label,
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="k" if np.isnan(v) or v >= 0.6 else "w",
                    )
        fig.colorbar(im, ax=ax, shrink=0.8, label="AP after the fix")
        _finish(
            fig,
            "COCO breakdown per class (area all): AP after removing each error type",
            settings_stamp(analysis, area="all"),
        )
        paths.append(save_figure(fig, out_dir / "coco_breakdown_classes.png"))
    return paths


def _cmap(name: str):
    from matplotlib import colormaps

    return colormaps[name].with_extremes(bad="0.85")  # NaN cells (n/a) in light grey


def _breakdown_panel(ax, curves: Mapping, aps: Mapping) -> None:
    # widest (FN) first: each smaller curve is filled over the larger ones, as in COCO's figure
    fills = {}
    for t in reversed(BREAKDOWN_TYPES):
        c = _curve(curves.get(t))
        if c is None:
            continue
        ap = aps.get(t) if valid(aps.get(t)) else float(c.mean())
        fills[t] = ax.fill_between(
            RECALL,
            0,
            c,
            facecolor=BREAKDOWN_COLORS[t],
            edgecolor="k",
            lw=0.4,
            label=f"[{fmt_frac(ap)}] {t}",
        )
    _pr_axes(ax)
    if fills:
        order = [fills[t] for t in BREAKDOWN_TYPES if t in fills]
        ax.legend(handles=order, loc="lower left", fontsize=8, framealpha=0.9)
    if "Sim" not in fills:
        ax.text(0.98, 0.98, "Sim n/a", ha="right", va="top", fontsize=7, transform=ax.transAxes)


def _tick_fontsize(n: int) -> float:
    return 9 if n <= 20 else 7 if n <= 40 else 5.5


# ---------------------------------------------------------------------------------------------
# TIDE


def plot_tide(analysis: Mapping, out_dir: PathLike) -> List[Path]:
    """TIDE's dAP bars: how many AP50 points fixing each error type would add (main types, and the
    special FalsePos / FalseNeg pair), in ``tide.png``."""
    tide = analysis.get("tide") or {}
    main = tide.get("main") or {}
    special = tide.get("special") or {}
    if not main and not special:
        return []
    fig = _figure(9.0, 3.8)
    ax_main, ax_special = fig.subplots(1, 2, width_ratios=[3, 1.3])
    _tide_bars(ax_main, [t for t in TIDE_MAIN if t in main] or list(main), main, "main errors")
    _tide_bars(ax_special, [t for t in TIDE_SPECIAL if t in special], special, "special")
    ap50 = tide.get("ap50")
    title = "TIDE: dAP (AP50 points gained by fixing each error type)"
    if valid(ap50):
        title += f", AP50 = {ap50:.1f}"
    _finish(fig, title, settings_stamp(analysis, IoU=".50 (bg .10)", area="all"))
    return [save_figure(fig, Path(out_dir) / "tide.png")]


def _tide_bars(ax, types: Sequence[str], values: Mapping, title: str) -> None:
    vals = [float(values[t]) if valid(values.get(t)) else 0.0 for t in types]
    bars = ax.bar(range(len(types)), vals, color=[TIDE_COLORS.get(t, "0.5") for t in types])
    ax.set_xticks(range(len(types)), [text(t) for t in types], fontsize=9)
    for bar, t in zip(bars, types):
        label = f"{values[t]:.2f}" if valid(values.get(t)) else "n/a"
        ax.annotate(
            label,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 2),
            textcoords="offset points",
        )
    ax.set_ylabel("dAP (points)")
    ax.set_title(title, fontsize=10)
    ax.set_ylim(0, max(vals + [1.0]) * 1.18)
    ax.grid(axis="y", alpha=0.3)


# ---------------------------------------------------------------------------------------------
# confusion matrix


def plot_confusion_matrix(analysis: Mapping, out_dir: PathLike) -> List[Path]:
    """The row-normalised confusion matrix (rows = ground truth, columns = detections, the last
    row/column "background") as a heatmap, ``confusion_matrix.png``. The figure grows with the
    number of classes and the labels shrink, so 80 COCO classes stay legible; the counts are
    written in the cells only while the matrix is small enough to read them."""
    cm = analysis.get("confusion_matrix") or {}
    labels = list(cm.get("labels") or [])
    counts = cm.get("counts")
    if not labels or counts is None:
        return []
    counts = np.asarray(counts, dtype=np.float64).reshape(len(labels), len(labels))
    norm = cm.get("row_normalized")
    if norm is None:
        totals = counts.sum(axis=1, keepdims=True)
        norm = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    norm = np.asarray(norm, dtype=np.float64).reshape(counts.shape)
    n = len(labels)
    side = float(np.clip(0.16 * n + 3.5, 6.0, 22.0))
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot()
    # a square-root colour scale: the off-diagonal confusions, a few percent each, stay visible
    im = ax.imshow(norm, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=1), interpolation="nearest")
    fs = _tick_fontsize(n)
    ticks = [text(x) for x in labels]
    ax.set_xticks(range(n), ticks, fontsize=fs, rotation=90)
    ax.set_yticks(range(n), ticks, fontsize=fs)
    ax.set_xlabel("detected as")
    ax.set_ylabel("ground truth")
    if n <= 16:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(
                        j,
                        i,
                        f"{int(counts[i, j])}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="w" if norm[i, j] > 0.5 else "k",
                    )
    fig.colorbar(im, ax=ax, shrink=0.7, label="fraction of the ground-truth row")
    _finish(
        fig,
        "Confusion matrix (row-normalised)",
        settings_stamp(
            analysis,
            IoU=cm.get("iou_thresh", (analysis.get("settings") or {}).get("iou_thresh")),
            score=_ge(cm.get("score_thresh", (analysis.get("settings") or {}).get("score_thresh"))),
        ),
    )
    return [save_figure(fig, Path(out_dir) / "confusion_matrix.png")]


def _ge(x: Any) -> Optional[str]:
    return None if x is None else f">= {x:.3g}"


# ---------------------------------------------------------------------------------------------
# operating points


def plot_operating_points(analysis: Mapping, out_dir: PathLike) -> List[Path]:
    """Per class, the score threshold with the best F1 and the precision / recall / F1 there, as
    grouped horizontal bars (``operating_points.png``)."""
    ops = analysis.get("operating_points") or {}
    if not ops:
        return []
    names = list(ops)
    keys = ("score", "precision", "recall", "f1")
    colors = ("0.55", "#1f77b4", "#2ca02c", "#d62728")
    markers = ("|", "o", "s", "D")
    few = len(names) <= 20  # grouped bars; for more classes one row of markers per class
    fig = _figure(8.0, max(3.0, (0.42 if few else 0.17) * len(names) + 1.6))
    ax = fig.add_subplot()
    y = np.arange(len(names))
    h = 0.8 / len(keys)
    for k, (key, color) in enumerate(zip(keys, colors)):
        vals = np.array(
            [ops[n].get(key) if valid((ops[n] or {}).get(key)) else np.nan for n in names], float
        )
        if few:
            ax.barh(y - 0.4 + h * (k + 0.5), np.nan_to_num(vals), height=h, color=color, label=key)
        else:
            ax.scatter(
                vals, y, s=22, c=color, marker=markers[k], label=key, zorder=3, clip_on=False
            )
    for i, n in enumerate(names):
        if not valid((ops[n] or {}).get("score")):
            ax.text(0.01, i, "no operating point", va="center", fontsize=7, color="0.3")
    ax.set_yticks(y, [text(n) for n in names], fontsize=_tick_fontsize(len(names)))
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xlim(0, 1)
    ax.grid(axis="x", alpha=0.3)
    if not few:
        ax.grid(axis="y", alpha=0.15)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=8, ncols=4, frameon=False)
    _finish(fig, "Best-F1 operating point per class", settings_stamp(analysis, IoU=".50"))
    return [save_figure(fig, Path(out_dir) / "operating_points.png")]


# ---------------------------------------------------------------------------------------------
# compare


def plot_compare(analysis: Mapping, out_dir: PathLike) -> List[Path]:
    """When the analysis compares two result files: the per-class AP difference (this - other),
    sorted, green where this one is better (``compare.png``)."""
    cmp = analysis.get("compare")
    if not cmp or not cmp.get("per_class_ap"):
        return []
    per = cmp["per_class_ap"]
    rows = [(n, v.get("delta")) for n, v in per.items() if isinstance(v, Mapping)]
    rows = [(n, float(d)) for n, d in rows if isinstance(d, (int, float)) and math.isfinite(d)]
    if not rows:
        return []
    rows.sort(key=lambda r: r[1])
    fig = _figure(7.5, max(3.0, 0.3 * len(rows) + 1.6))
    ax = fig.add_subplot()
    vals = [100.0 * d for _, d in rows]  # AP points, as the report's tables show them
    ax.barh(range(len(rows)), vals, color=["#2ca02c" if d >= 0 else "#d62728" for d in vals])
    ax.set_yticks(range(len(rows)), [text(n) for n, _ in rows], fontsize=_tick_fontsize(len(rows)))
    ax.set_ylim(-0.5, len(rows) - 0.5)
    if not any(vals):
        ax.set_xlim(-1, 1)
        ax.text(
            0,
            len(rows) / 2,
            "no per-class AP difference",
            ha="center",
            va="center",
            bbox={"facecolor": "w", "edgecolor": "0.6"},
        )
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("AP difference in points (this - other)")
    ax.grid(axis="x", alpha=0.3)
    this = short_path((analysis.get("settings") or {}).get("results") or "this")
    other = short_path(cmp.get("other") or "other")
    _finish(fig, f"Per-class AP: {this} vs {other}", settings_stamp(analysis, area="all"))
    return [save_figure(fig, Path(out_dir) / "compare.png")]


# ---------------------------------------------------------------------------------------------


def plot_all(analysis: Mapping, out_dir: PathLike) -> Dict[str, List[Path]]:
    """Every figure the analysis has data for, by report section. A figure that fails to draw is
    logged and left out: one odd value must not cost the whole report."""
    out_dir = Path(out_dir)
    sections = {
        "pr_curves": plot_pr_curves,
        "coco_breakdown": plot_coco_breakdown,
        "tide": plot_tide,
        "confusion_matrix": plot_confusion_matrix,
        "operating_points": plot_operating_points,
        "compare": plot_compare,
    }
    figures: Dict[str, List[Path]] = {}
    for name, fn in sections.items():
        try:
            figures[name] = fn(analysis, out_dir)
        except WriteError:
            raise
        except Exception as e:  # a report with one figure missing beats no report
            logger.warning("analysis report: the %s figure could not be drawn: %s", name, e)
            figures[name] = []
    return figures
