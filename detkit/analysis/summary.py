"""The summary in words of the error-analysis report: a few plain sentences saying what fails.

:func:`summarize` derives them from the analysis dict (see ``detkit.analysis``); the report page
(``detkit.analysis.report``) opens with them. :func:`top_confusions` lists the largest
class-to-class cells of the confusion matrix, for those sentences and the page's table.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping

import numpy as np

from . import plots
from .plots import valid

TIDE_NAMES = {
    "Cls": "classification",
    "Loc": "localisation",
    "Both": "classification + localisation",
    "Dupe": "duplicate detections",
    "Bkg": "background false positives",
    "Miss": "missed objects",
    "FalsePos": "all false positives",
    "FalseNeg": "all false negatives",
}
# what each step of COCO's breakdown removes: (from, to, words)
BREAKDOWN_STEPS = (
    ("C50", "Loc", "localisation errors"),
    ("Loc", "Sim", "confusions with a similar class (same supercategory)"),
    ("Sim", "Oth", "confusions with other classes"),
    ("Oth", "BG", "background false positives"),
    ("BG", "FN", "missed objects"),
)


def percent(x: Any) -> str:
    return f"{100.0 * x:.1f}" if valid(x) else "n/a"


def top_confusions(analysis: Mapping, n: int = 15) -> List[Dict[str, Any]]:
    """The largest off-diagonal class-to-class cells of the confusion matrix (background left
    out), largest first: ``[{"ground_truth", "detected_as", "count", "fraction"}]`` where
    ``fraction`` is the share of that ground-truth row."""
    cm = analysis.get("confusion_matrix") or {}
    labels = list(cm.get("labels") or [])
    if len(labels) < 3 or cm.get("counts") is None:
        return []
    counts = np.asarray(cm["counts"], dtype=np.float64).reshape(len(labels), len(labels))
    k = len(labels) - 1  # the last row / column is background
    rows = counts.sum(axis=1)
    cells = [
        (counts[i, j], i, j) for i in range(k) for j in range(k) if i != j and counts[i, j] > 0
    ]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [
        {
            "ground_truth": labels[i],
            "detected_as": labels[j],
            "count": int(c),
            "fraction": float(c / rows[i]) if rows[i] > 0 else None,
        }
        for c, i, j in cells[:n]
    ]


def summarize(analysis: Mapping) -> List[str]:
    """A few plain-text sentences saying what fails, derived from the numbers: the overall AP, the
    biggest TIDE errors, the weakest object size, the biggest step of COCO's breakdown, the most
    frequent confusions, the most missed class and the one with most background false positives,
    the lowest-AP classes, and the comparison when there is one. Escape before putting in HTML."""
    out = []
    m = analysis.get("metrics") or {}
    s = analysis.get("settings") or {}
    if valid(m.get("AP")):
        out.append(
            f"AP {percent(m.get('AP'))} (AP50 {percent(m.get('AP50'))}, AP75 {percent(m.get('AP75'))}) "
            f"on {s.get('n_images', '?')} images and {s.get('n_detections', '?')} detections."
        )

    tide = analysis.get("tide") or {}
    main = {t: v for t, v in (tide.get("main") or {}).items() if valid(v)}
    if main:
        ranked = sorted(main, key=lambda t: -main[t])
        first = ranked[0]
        sentence = (
            f"The largest TIDE error is {first} ({TIDE_NAMES.get(first, first)}): fixing it "
            f"would add {main[first]:.1f} AP50 points"
        )
        rest = [f"{t} {main[t]:.1f}" for t in ranked[1:3] if main[t] > 0]
        out.append(sentence + (f"; next come {' and '.join(rest)}." if rest else "."))
    special = tide.get("special") or {}
    fp, fn = special.get("FalsePos"), special.get("FalseNeg")
    if valid(fp) and valid(fn):
        more, less = ("false positives", "misses") if fp >= fn else ("misses", "false positives")
        out.append(
            f"All false positives together cost {fp:.1f} AP50 points, all misses {fn:.1f}: "
            f"{more} hurt more than {less}."
        )

    sizes = {k: m.get(k) for k in ("APs", "APm", "APl") if valid(m.get(k))}
    if len(sizes) >= 2:
        worst = min(sizes, key=lambda k: sizes[k])
        word = {"APs": "Small", "APm": "Medium", "APl": "Large"}[worst]
        others = ", ".join(f"{k} {percent(v)}" for k, v in sizes.items() if k != worst)
        out.append(f"{word} objects are the weakest: {worst} {percent(sizes[worst])} ({others}).")

    overall = ((analysis.get("coco_breakdown") or {}).get("all") or {}).get("all") or {}
    steps = []
    for a, b, words in BREAKDOWN_STEPS:
        if a == "Loc" and not valid(overall.get("Sim")):
            continue
        if a == "Sim" and not valid(overall.get("Sim")):
            a = "Loc"
        if valid(overall.get(a)) and valid(overall.get(b)):
            steps.append((overall[b] - overall[a], a, b, words))
    if steps:
        gain, a, b, words = max(steps)
        sentence = (
            f"In COCO's breakdown (all areas) the largest gap is {words}: removing them raises "
            f"AP from {percent(overall[a])} ({a}) to {percent(overall[b])} ({b})"
        )
        wrong = [st for st in steps if st[2] != "FN" and st[0] > 0]
        if b == "FN" and wrong:  # misses usually lead; say which wrong detections cost most
            g2, _, _, words2 = max(wrong)
            sentence += f"; among wrong detections, {words2} cost the most (+{100 * g2:.1f} AP)"
        out.append(sentence + ".")

    conf = top_confusions(analysis, 3)
    if conf:
        parts = [
            f"{c['ground_truth']} detected as {c['detected_as']} ({c['count']}x"
            + (f", {_share(c['fraction'])} of {c['ground_truth']})" if c["fraction"] else ")")
            for c in conf
        ]
        out.append("Most frequent confusions: " + "; ".join(parts) + ".")
    cm = analysis.get("confusion_matrix") or {}
    labels = list(cm.get("labels") or [])
    if len(labels) >= 2 and cm.get("counts") is not None:
        counts = np.asarray(cm["counts"], dtype=np.float64).reshape(len(labels), len(labels))
        k = len(labels) - 1
        thresh = cm.get("score_thresh", s.get("score_thresh"))
        at = f" at score >= {thresh:.3g}" if thresh is not None else ""
        missed = counts[:k, k]
        if missed.max(initial=0) > 0:
            i = int(np.argmax(missed))
            out.append(
                f"Most missed class{at}: {labels[i]} ({int(missed[i])} of its "
                f"{int(counts[i].sum())} objects)."
            )
        bkg = counts[k, :k]
        if bkg.max(initial=0) > 0:
            j = int(np.argmax(bkg))
            out.append(
                f"Most background false positives{at}: {labels[j]} "
                f"({_count(bkg[j], 'detection')} matching no object)."
            )

    per_class = {n: v for n, v in (m.get("per_class") or {}).items() if valid(v)}
    if len(per_class) >= 2:
        low = sorted(per_class, key=lambda n: (per_class[n], n))[:3]
        out.append("Lowest AP: " + ", ".join(f"{n} {percent(per_class[n])}" for n in low) + ".")

    cmp = analysis.get("compare") or {}
    deltas = {
        n: v.get("delta")
        for n, v in (cmp.get("per_class_ap") or {}).items()
        if isinstance(v, Mapping) and isinstance(v.get("delta"), (int, float))
    }
    if deltas:
        other = plots.short_path(cmp.get("other") or "the other results")
        better = sum(d > 0 for d in deltas.values())
        worse = sum(d < 0 for d in deltas.values())
        best = max(deltas, key=lambda n: deltas[n])
        worst_n = min(deltas, key=lambda n: deltas[n])
        if not better and not worse:
            out.append(f"Against {other}: the same AP on every class.")
        else:
            sentence = (
                f"Against {other}: better on {_count(better, 'class')}, worse on "
                f"{_count(worse, 'class')}"
            )
            if better:
                sentence += f"; largest gain {best} ({100 * deltas[best]:+.1f} AP)"
            if worse:
                sentence += f"; largest loss {worst_n} ({100 * deltas[worst_n]:+.1f} AP)"
            out.append(sentence + ".")
    return out


def _count(n: Any, noun: str) -> str:
    """``1 class``, ``2 classes``, ``3 detections``."""
    n = int(n)
    plural = noun + ("es" if noun.endswith("s") else "s")
    return f"{n} {noun if n == 1 else plural}"


def _share(fraction: float) -> str:
    return "<1%" if 0 < fraction < 0.005 else f"{100 * fraction:.0f}%"
