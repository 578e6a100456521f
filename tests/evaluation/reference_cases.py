"""Reference cases from shared/testdata (see its PROVENANCE.md) shared by the evaluation tests."""

from __future__ import annotations

from pathlib import Path

VAL100 = "faster_coco_eval/tests/dataset/cocoapi/instances_val2014_100.json"
FAKE_BBOX = "cocoapi/results/instances_val2014_fakebbox100_results.json"
VAL100_STATS = [
    0.5045806987,
    0.6969727247,
    0.5729816670,
    0.5856257209,
    0.5193996948,
    0.5013978986,
    0.3868127796,
    0.5936795763,
    0.5953529829,
    0.6398109626,
    0.5664205979,
    0.5642905983,
]

# shared/testdata/PROVENANCE.md: VOC-style AP with the +1 pixel convention, x2 = x + w
EXPECTED_11PT = {0.1: 0.3333333333, 0.3: 0.2683982683, 0.5: 0.0303030303, 0.75: 0.0}
EXPECTED_AREA = {0.1: 0.3371980676, 0.3: 0.2456866804, 0.5: 0.0222222222, 0.75: 0.0}
CASE_FOLDERS = [
    ("review_object_detection_metrics/tests/test_case_1", "gts", "dets"),
    ("Object-Detection-Metrics", "groundtruths", "detections"),
]


def read_case(folder: Path, gt_dir: str, det_dir: str):
    """{image: [(x, y, w, h)]} ground truth and [(image, score, (x, y, w, h))] detections."""
    gts, dets = {}, []
    for path in sorted((folder / gt_dir).glob("*.txt")):
        gts[path.stem] = [
            tuple(map(float, ln.split()[1:5])) for ln in path.read_text().splitlines() if ln.strip()
        ]
        for ln in (folder / det_dir / path.name).read_text().splitlines():
            if ln.strip():
                parts = ln.split()
                dets.append((path.stem, float(parts[1]), tuple(map(float, parts[2:6]))))
    return gts, dets


def devkit_box(xywh):  # the reference's convention: x2 = x + w, both ends inclusive
    x, y, w, h = xywh
    return [x, y, x + w, y + h]


def write_devkit(root: Path, gts: dict, difficult: dict = None, cls: str = "person") -> Path:
    """A minimal VOCdevkit/VOC2007 with one class; boxes given in devkit pixels."""
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "test.txt").write_text("\n".join(gts) + "\n")
    for image_id, boxes in gts.items():
        objs = "".join(
            f"<object><name>{cls}</name><difficult>{int((difficult or {}).get((image_id, k), 0))}"
            f"</difficult><bndbox><xmin>{b[0]:g}</xmin><ymin>{b[1]:g}</ymin><xmax>{b[2]:g}</xmax>"
            f"<ymax>{b[3]:g}</ymax></bndbox></object>"
            for k, b in enumerate(boxes)
        )
        (root / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{objs}</annotation>")
    return root
