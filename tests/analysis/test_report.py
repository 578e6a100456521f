"""The analysis report: figures, CSVs, JSON, the HTML page (escaped, self-contained, every image
loading in a real browser) and the error galleries drawn on images."""

import csv
import json
import logging
import shutil

import cv2
import numpy as np
import pytest

from detkit.analysis import gallery, plots, report, summary
from detkit.evaluation.coco_io import load_coco_gt

EVIL = "<b>&x"  # a class name that must be escaped in the HTML page
AREAS = ("all", "small", "medium", "large")
TYPES = ("C75", "C50", "Loc", "Sim", "Oth", "BG", "FN")


def _pr(ap: float, rng) -> list:
    """A decreasing 101-point precision curve whose mean is roughly ``ap``."""
    r = np.linspace(0, 1, 101)
    knee = min(0.98, max(0.05, ap))
    curve = np.clip(1.0 - (r / (knee + 0.02)) ** 4, 0, 1) * (0.9 + 0.1 * rng.random())
    return np.round(np.minimum.accumulate(curve), 4).tolist()


def make_analysis(names=("person", "car", EVIL, "ghost", "lonely"), compare=True, seed=0) -> dict:
    """A realistic analysis dict: 'ghost' has no ground truth (-1 everywhere), 'lonely' has no
    detections (AP 0), the ground truth has no supercategory (Sim is None)."""
    rng = np.random.default_rng(seed)
    names = list(names)
    ap = {n: round(float(rng.uniform(0.15, 0.7)), 4) for n in names}
    ap["ghost"], ap["lonely"] = -1.0, 0.0
    real = [n for n in names if n != "ghost"]
    pr = {}
    for iou, shrink in (("iou_0.50", 1.0), ("iou_0.75", 0.6)):
        pr[iou] = {"all": _pr(0.5 * shrink, rng)}
        for n in names:
            if n == "ghost":
                pr[iou][n] = [-1.0] * 101
            elif n == "lonely":
                pr[iou][n] = [0.0] * 101
            else:
                pr[iou][n] = _pr(ap[n] * shrink, rng)

    def breakdown(base: float) -> dict:
        out = {}
        for area, f in zip(AREAS, (1.0, 0.5, 0.9, 1.1)):
            vals, v = {}, base * f * 0.7
            for t in TYPES:
                v = min(1.0, v + (0.0 if t == "C75" else 0.07))
                vals[t] = None if t == "Sim" else round(v, 4)
            vals["FN"] = 1.0
            out[area] = vals
        return out

    coco_breakdown = {"all": breakdown(0.5)}
    coco_breakdown.update({n: breakdown(max(ap[n], 0.0)) for n in real})
    curves = {}
    for area, f in zip(AREAS, (1.0, 0.5, 0.9, 1.1)):
        curves[area] = {}
        level = 0.3 * f
        for t in TYPES:
            level = min(0.97, level + 0.08)
            curves[area][t] = None if t == "Sim" else _pr(level, rng)
    k = len(names)
    counts = rng.integers(0, 6, size=(k + 1, k + 1))
    np.fill_diagonal(counts, rng.integers(20, 60, size=k + 1))
    counts[names.index("ghost"), :] = 0  # no ground truth
    counts[:, names.index("lonely")] = 0  # no detections
    counts[k, k] = 0
    counts[0, 1] = 25  # person detected as car: the top confusion
    rows = counts.sum(1, keepdims=True)
    cols = counts.sum(0, keepdims=True)
    row_n = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    col_n = np.divide(counts, cols, out=np.zeros(counts.shape), where=cols > 0)
    ops = {}
    for n in names:
        if n in ("ghost", "lonely"):
            ops[n] = {"score": None, "precision": None, "recall": None, "f1": None}
        else:
            p, r = float(rng.uniform(0.4, 0.9)), float(rng.uniform(0.3, 0.8))
            ops[n] = {
                "score": round(float(rng.uniform(0.2, 0.8)), 3),
                "precision": round(p, 4),
                "recall": round(r, 4),
                "f1": round(2 * p * r / (p + r), 4),
            }
    metrics = dict(
        zip(
            ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm"),
            (0.412, 0.633, 0.441, 0.182, 0.455, 0.561, 0.331, 0.512, 0.544, 0.301, 0.587),
        )
    )
    metrics["ARl"] = 0.702
    metrics["per_class"] = ap
    analysis = {
        "settings": {
            "dataset": "/data/coco/annotations/instances_val.json",
            "results": "/runs/r50/detections.json",
            "rules": "coco",
            "n_images": 50,
            "n_detections": 3100,
            "max_dets": 100,
            "area_ranges": {
                "all": [0, 1e10],
                "small": [0, 1024],
                "medium": [1024, 9216],
                "large": [9216, 1e10],
            },
            "score_thresh": 0.5,
            "iou_thresh": 0.5,
            "compare": "/runs/r18/detections.json" if compare else None,
        },
        "metrics": metrics,
        "per_class_area_ap": {
            n: {
                a: (-1.0 if n == "ghost" else round(max(ap[n], 0) * f, 4))
                for a, f in zip(AREAS, (1.0, 0.4, 0.9, 1.2))
            }
            for n in names
        },
        "pr_curves": pr,
        "coco_breakdown": coco_breakdown,
        "coco_breakdown_curves": curves,
        "tide": {
            "main": {"Cls": 3.1, "Loc": 6.4, "Both": 0.8, "Dupe": 0.3, "Bkg": 4.2, "Miss": 2.7},
            "special": {"FalsePos": 9.9, "FalseNeg": 7.5},
            "ap50": 63.3,
        },
        "confusion_matrix": {
            "labels": names + ["background"],
            "counts": counts.tolist(),
            "row_normalized": row_n.round(4).tolist(),
            "col_normalized": col_n.round(4).tolist(),
            "precision": {n: (None if n == "lonely" else 0.7) for n in names},
            "recall": {n: (None if n == "ghost" else 0.6) for n in names},
            "score_thresh": 0.5,
            "iou_thresh": 0.5,
        },
        "operating_points": ops,
        "notes": [
            "class 'lonely' has no detections",
            "class 'ghost' has no ground truth",
            "Sim unavailable: the ground truth has no supercategory",
            f"class '{EVIL}' is tricky",
        ],
        "compare": None,
    }
    if compare:
        analysis["compare"] = {
            "other": "/runs/r18/detections.json",
            "per_class_ap": {
                n: {
                    "this": ap[n],
                    "other": round(ap[n] - 0.05 + 0.02 * i, 4),
                    "delta": 0.05 - 0.02 * i,
                }
                for i, n in enumerate(real)
            },
            "tide_delta": {
                "Cls": -0.5,
                "Loc": 1.2,
                "Both": 0.0,
                "Dupe": 0.1,
                "Bkg": -2.0,
                "Miss": 0.4,
            },
            "breakdown_delta": {t: (None if t == "Sim" else 0.01) for t in TYPES},
            "images_this_better": [{"image_id": 3, "this_errors": 1, "other_errors": 6}],
            "images_other_better": [{"image_id": 7, "this_errors": 5, "other_errors": 2}],
        }
    return analysis


# ---------------------------------------------------------------------------------------------
# a tiny dataset with images on disk, for the galleries


def _gallery_inputs(tmp_path, missing: int = 1):
    """Ground truth for 4 images (the last ``missing`` of them not on disk), a TIDE-style result
    with every error type, and the image paths."""
    rng = np.random.default_rng(1)
    images, anns, paths = [], [], {}
    cats = [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}, {"id": 3, "name": EVIL}]
    for i in range(1, 5):
        h, w = (900, 1200) if i % 2 else (300, 400)
        images.append({"id": i, "file_name": f"im{i}.jpg", "height": h, "width": w})
        path = tmp_path / "images" / f"im{i}.jpg"
        paths[i] = path
        if i <= 4 - missing:
            path.parent.mkdir(exist_ok=True)
            img = (rng.random((h, w, 3)) * 80 + 60).astype(np.uint8)
            cv2.imwrite(str(path), img)
        for j in range(3):
            box = [w * (0.1 + 0.25 * j), h * 0.2, w * 0.2, h * 0.4]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": j + 1,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    gt = load_coco_gt({"images": images, "annotations": anns, "categories": cats})
    # the best-scored error of all, but in a crowd region: it counts nowhere, shown nowhere
    errors = [_err("Bkg", 1, 0.99, [40, 40, 20, 20], 1, None, None)]
    errors[0]["ignored"] = True
    tps = []
    for a in anns:
        i, b, c = a["image_id"], a["bbox"], a["category_id"]
        shifted = [b[0] + 0.3 * b[2], b[1], b[2], b[3]]
        if c == 1:
            tps.append({"image_id": i, "score": 0.9, "det_box": b, "category_id": 1})
        elif c == 2:
            errors.append(_err("Cls", i, 0.3 + 0.1 * i, b, 3, b, 2))
            errors.append(_err("Loc", i, 0.5 + 0.05 * i, shifted, 2, b, 2))
        else:
            errors.append(_err("Miss", i, None, None, None, b, 3))
            errors.append(_err("Both", i, 0.4, shifted, 1, b, 3))
            errors.append(_err("Dupe", i, 0.2, b, 1, b, 1))
            errors.append(_err("Bkg", i, 0.7, [5, 5, 30, 30], 2, None, None))
    return gt, {"errors": errors, "true_positives": tps}, paths


def _err(kind, image_id, score, det_box, det_cat, gt_box, gt_cat) -> dict:
    return {
        "type": kind,
        "image_id": image_id,
        "score": score,
        "det_box": det_box,
        "det_category_id": det_cat,
        "gt_box": gt_box,
        "gt_category_id": gt_cat,
    }


# ---------------------------------------------------------------------------------------------


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_report_files_json_and_csv(tmp_path):
    analysis = make_analysis()
    page = report.write_report(analysis, tmp_path / "out")
    out = tmp_path / "out"
    assert page == out / "report.html"
    assert json.loads((out / "analysis.json").read_text()) == analysis
    names = list(analysis["metrics"]["per_class"])

    rows = _read_csv(out / "per_class_ap.csv")
    assert rows[0] == ["class", "all", "small", "medium", "large"]
    assert [r[0] for r in rows[1:]] == names
    assert rows[1 + names.index("ghost")][1:] == ["-1.0"] * 4
    assert float(rows[1][1]) == analysis["per_class_area_ap"]["person"]["all"]

    rows = _read_csv(out / "coco_breakdown.csv")
    assert rows[0] == ["class", "area", "C75", "C50", "Loc", "Sim", "Oth", "BG", "FN"]
    assert len(rows) == 1 + 4 * len(analysis["coco_breakdown"])  # (overall + classes) x areas
    assert rows[1][:2] == ["all", "all"] and rows[1][5] == ""  # Sim unavailable: empty

    rows = _read_csv(out / "operating_points.csv")
    assert rows[0] == ["class", "score", "precision", "recall", "f1"]
    assert rows[1 + names.index("lonely")][1:] == ["", "", "", ""]

    rows = _read_csv(out / "confusion_matrix.csv")
    labels = analysis["confusion_matrix"]["labels"]
    assert rows[0][1:] == labels and [r[0] for r in rows[1:]] == labels
    assert [[int(v) for v in r[1:]] for r in rows[1:]] == analysis["confusion_matrix"]["counts"]

    rows = _read_csv(out / "tide.csv")
    assert rows[0] == ["group", "type", "dAP"]
    assert [r[1] for r in rows[1:]] == [*analysis["tide"]["main"], "FalsePos", "FalseNeg", "AP50"]

    assert len(_read_csv(out / "compare_per_class_ap.csv")) == 1 + len(names) - 1
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == sorted(
        [
            "pr_overall.png",
            "pr_per_class.png",
            "coco_breakdown.png",
            "coco_breakdown_classes.png",
            "tide.png",
            "confusion_matrix.png",
            "operating_points.png",
            "compare.png",
        ]
    )
    for p in (out / "figures").iterdir():
        assert cv2.imread(str(p)) is not None, p


def test_report_html_escapes_and_is_self_contained(tmp_path):
    page = report.write_report(make_analysis(), tmp_path).read_text(encoding="utf-8")
    assert EVIL not in page
    assert "&lt;b&gt;&amp;x" in page
    assert "class &#x27;&lt;b&gt;&amp;x&#x27; is tricky" in page  # the notes are escaped too
    # nothing fetched from elsewhere: every image is a data URI, no scripts, no external styles
    assert "<script" not in page and "<link" not in page and "http" not in page
    assert page.count('src="data:image/png;base64,') == 8
    for section in ("summary", "pr", "breakdown", "tide", "confusion", "operating", "compare"):
        assert f'id="{section}"' in page
    assert "The largest TIDE error is Loc" in page
    assert "Small objects are the weakest" in page
    assert "person detected as car (25x" in page


def test_report_without_compare_and_with_missing_values(tmp_path):
    report.write_report(make_analysis(), tmp_path)  # an earlier run with a comparison
    (tmp_path / "gallery").mkdir()
    (tmp_path / "gallery" / "Loc_01_img3.jpg").write_bytes(b"old")
    (tmp_path / "gallery" / "mine.txt").write_text("not the report's")
    analysis = make_analysis(compare=False)
    analysis["metrics"]["per_class"]["car"] = np.float64("nan")  # numpy and NaN: strict JSON
    analysis["tide"]["main"]["Dupe"] = None
    analysis["coco_breakdown_curves"]["small"] = None
    analysis["metrics"]["APs"] = -1.0
    page = report.write_report(analysis, tmp_path).read_text(encoding="utf-8")
    assert 'id="compare"' not in page and not (tmp_path / "compare_per_class_ap.csv").exists()
    assert not (tmp_path / "figures" / "compare.png").exists()
    assert [p.name for p in (tmp_path / "gallery").iterdir()] == ["mine.txt"]
    assert "n/a" in page
    saved = json.loads((tmp_path / "analysis.json").read_text(), parse_constant=pytest.fail)
    assert saved["metrics"]["per_class"]["car"] is None


def test_report_of_an_analysis_without_data(tmp_path):
    keys = ("settings", "metrics", "per_class_area_ap", "pr_curves", "coco_breakdown")
    keys += ("coco_breakdown_curves", "tide", "confusion_matrix", "operating_points", "notes")
    analysis = {k: None for k in keys + ("compare",)}
    page = report.write_report(analysis, tmp_path).read_text(encoding="utf-8")
    assert page.count("Not available in this analysis.") == 6  # each section says so
    assert sorted(p.name for p in tmp_path.iterdir()) == ["analysis.json", "report.html"]


def test_summary_in_words():
    lines = summary.summarize(make_analysis())
    text = "\n".join(lines)
    assert lines[0].startswith("AP 41.2 (AP50 63.3, AP75 44.1) on 50 images")
    assert "fixing it would add 6.4 AP50 points; next come Bkg 4.2 and Cls 3.1." in text
    assert "false positives hurt more than misses" in text
    assert "Lowest AP: lonely 0.0," in text
    assert "better on" in text


def test_plots_leave_no_pyplot_state(tmp_path):
    names = [f"class {i}" for i in range(78)] + ["ghost", "lonely"]
    analysis = make_analysis(names=names)
    paths = plots.plot_confusion_matrix(analysis, tmp_path)
    paths += plots.plot_pr_curves(analysis, tmp_path, max_classes=12)
    assert [p.name for p in paths] == ["confusion_matrix.png", "pr_overall.png", "pr_per_class.png"]
    h, w = cv2.imread(str(paths[0])).shape[:2]
    assert min(h, w) > 1500  # 81 labels need room
    import sys

    if "matplotlib.pyplot" in sys.modules:  # imported by another test: it must hold no figures
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []


def test_gallery_entries_and_drawing(tmp_path, detkit_log):
    gt, tide, paths = _gallery_inputs(tmp_path, missing=1)
    entries = gallery.build_gallery(gt, tide, paths, n_worst=2, n_per_type=2)
    warnings = [r for r in detkit_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "1 image(s) not found" in warnings[0].getMessage()
    assert str(paths[4]) in warnings[0].getMessage()
    assert all(e["image_id"] != 4 for e in entries)
    kinds = [e["kind"] for e in entries]
    assert kinds[:2] == ["worst", "worst"]
    for t in ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss"):
        assert kinds.count(t) == 2, t
    loc = [e for e in entries if e["kind"] == "Loc"]
    assert [e["image_id"] for e in loc] == [3, 2]  # highest score first
    assert loc[0]["focus"]["score"] == pytest.approx(0.65)
    assert all(e["focus"]["score"] != 0.99 for e in entries if e["focus"])  # the ignored one
    written = gallery.draw_gallery(entries, tmp_path / "gallery")
    assert len(written) == len(entries)
    for p in written:
        img = cv2.imread(str(p))
        assert img is not None and p.suffix == ".png"
        assert max(img.shape[:2]) <= 640 + 80  # long side 640 plus the caption band
    # an image that disappears after the entries were built is skipped, with a warning
    paths[1].unlink()
    written = gallery.draw_gallery(entries, tmp_path / "gallery2")
    assert len(written) == len([e for e in entries if e["image_id"] != 1])
    assert "could not be read" in detkit_log.messages[-1]


def test_gallery_ranks_worst_images_by_given_counts(tmp_path):
    gt, tide, paths = _gallery_inputs(tmp_path, missing=0)
    per_image = {1: {"tp": 100, "fp": 1}, 2: {"tp": 0, "fp": 5, "missed": 2}, 3: 3, 4: 0}
    by_name = {str(k): v for k, v in paths.items()}  # ids as read back from a JSON file
    entries = gallery.build_gallery(gt, tide, by_name, per_image, n_worst=5, n_per_type=0)
    assert [e["image_id"] for e in entries] == [2, 3, 1]  # true positives are not errors
    assert entries[0]["title"] == "image 2: 7 errors"
    assert {g["category_id"] for g in entries[0]["ground_truth"]} == {1, 2, 3}


def test_figures_are_stamped_with_their_settings():
    stamp = plots.settings_stamp(make_analysis(), IoU=0.5, area="small")
    for part in ("instances_val.json", "r50/detections.json", "rules: coco", "IoU: 0.5"):
        assert part in stamp
    assert "area: small" in stamp and "maxDets: 100" in stamp
    assert plots.text("a$b") == r"a\$b"  # no mathtext from class names


def test_report_in_chromium(tmp_path):
    from tests.analysis import browser

    if browser.chromium() is None:
        pytest.skip("chromium is not installed: the page is not rendered in a browser")
    gt, tide, paths = _gallery_inputs(tmp_path, missing=0)
    entries = gallery.build_gallery(gt, tide, paths, n_worst=2, n_per_type=1)
    page = report.write_report(make_analysis(), tmp_path / "out", gallery_entries=entries)
    assert len(list((tmp_path / "out" / "gallery").glob("*.jpg"))) == len(entries)
    # the page must not need its folder: move it alone and render it there
    alone = tmp_path / "alone" / "report.html"
    alone.parent.mkdir()
    shutil.copy(page, alone)
    status = browser.image_status(alone)
    assert len(status) == 8 + len(entries)
    assert all(s["ok"] for s in status), [s for s in status if not s["ok"]]
    shot = browser.screenshot(alone, tmp_path / "shot.png")
    assert cv2.imread(str(shot)).shape[:2] == (900, 1280)
