"""CPU smoke test of tools/benchmark.py --compare mmdetection: mmdet's model of the config's name,
its random weights copied into detkit's, both timed on the same tiny input. Skipped, visibly,
without mmdet and mmcv's ops."""

import sys

import pytest

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "tools"))


def _rows(out: str):
    return [[c.strip() for c in line.split("|")] for line in out.splitlines() if " | " in line]


def test_benchmark_compare_mmdetection(capsys):
    pytest.importorskip("mmcv.ops", reason="mmcv 2.1.0 with its ops not installed (.ci/run)")
    pytest.importorskip("mmdet", reason="mmdet 3.3.0 not installed (.ci/run)")
    import benchmark

    config = str(ROOT / "configs/mmdetection/faster-rcnn_r50_fpn_1x_coco.yaml")
    args = [config, "--compare", "mmdetection", "--size", "64x96", "--iters", "1"]
    assert benchmark.main(args + ["--warmup", "0"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert ["detkit", "infer", "fp32"] in [r[:3] for r in rows]
    assert ["mmdetection", "infer", "fp32"] in [r[:3] for r in rows]
    assert any(r[0] == "detkit" and r[-1].endswith("x") for r in rows)  # detkit / mmdetection


def test_benchmark_compare_mmdetection_needs_an_mmdetection_config(capsys):
    import benchmark

    args = [str(ROOT / "configs/quickstart.yaml"), "--compare", "mmdetection", "--size", "64x96"]
    with pytest.raises(SystemExit, match="needs a configs/mmdetection/ config"):
        benchmark.main(args + ["--iters", "1", "--warmup", "0"])
