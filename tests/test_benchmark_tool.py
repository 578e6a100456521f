"""CPU smoke test of tools/benchmark.py: the table comes out, with the torchvision column and ratios."""

import sys

import pytest
import torch

from tests.helpers import ROOT, error_lines

sys.path.insert(0, str(ROOT / "tools"))


def _rows(out: str):
    """The table's rows as lists of stripped cells (detkit's plain table: ``a | b | c``)."""
    return [[c.strip() for c in line.split("|")] for line in out.splitlines() if " | " in line]


def test_benchmark_inference_and_train_side_by_side(capsys):
    import benchmark

    assert (
        benchmark.main(
            [
                str(ROOT / "configs/frcnn_r50_fpn_coco.yaml"),
                "--compare",
                "torchvision",
                "--size",
                "64x96",
                "--iters",
                "1",
                "--warmup",
                "0",
                "model.num_classes=3",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    rows = _rows(captured.out)
    assert rows[0][-1] == "detkit speedup"  # the ratio column says what it is
    # a person reads the table only: no raw records, no "nan" for memory not measured on a CPU
    assert "Row(" not in captured.out + captured.err and "nan" not in captured.out
    assert ["detkit", "infer", "fp32"] in [r[:3] for r in rows]
    assert ["torchvision", "infer", "fp32"] in [r[:3] for r in rows]
    assert any(r[0] == "detkit" and r[-1].endswith("x") for r in rows)  # the detkit/tv ratio
    assert (
        benchmark.main(
            [
                str(ROOT / "configs/quickstart.yaml"),
                "--train",
                "--size",
                "64x96",
                "--iters",
                "1",
                "--warmup",
                "0",
                "--batch-sizes",
                "1,2",
            ]
        )
        == 0
    )
    rows = _rows(capsys.readouterr().out)
    assert [r[:2] for r in rows].count(["detkit", "train"]) == 2


def test_benchmark_sweep_table(capsys):
    import benchmark

    assert (
        benchmark.main(
            [
                str(ROOT / "configs/quickstart.yaml"),
                "--sweep",
                "--size",
                "64x96",
                "--iters",
                "1",
                "--warmup",
                "0",
                "--fuse-bn",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "size" in out and "batch 8" in out and "1000 props" in out


def test_benchmark_backends_side_by_side(capsys):
    pytest.importorskip("onnxruntime")
    import benchmark

    args = [str(ROOT / "configs/quickstart.yaml"), "--size", "64x96", "--iters", "2"]
    assert benchmark.main(args + ["--warmup", "1", "--backend", "eager,onnxruntime"]) == 0
    captured = capsys.readouterr()
    rows = _rows(captured.out)
    assert [r[:3] for r in rows[1:]] == [
        ["detkit (eager)", "infer", "fp32"],
        ["detkit (onnxruntime)", "infer", "fp32"],
    ]
    assert all(float(r[4]) > 0 for r in rows[1:])  # ms/img of each


def test_benchmark_backend_errors_are_one_line(capsys):
    import benchmark

    args = [str(ROOT / "configs/quickstart.yaml"), "--size", "64x96", "--iters", "1"]
    assert benchmark.main(args + ["--backend", "bogus"]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert (
        "BackendError: unknown backend 'bogus' (backend= / --backend); valid: eager, onnxruntime"
        in line
    )
    assert benchmark.main(args + ["--backend", "eager,onnxruntime", "--train"]) == 1
    assert "only inference has backends" in capsys.readouterr().err
    pytest.importorskip("onnxruntime")
    assert benchmark.main(args + ["--backend", "onnxruntime", "--precision", "fp32,bf16"]) == 1
    assert "test.precision=bf16 (the graph computes in float32" in capsys.readouterr().err


def test_speedup_is_each_detkit_row_over_the_compared_framework():
    from detkit.benchmark import Row, attach_ratios, format_table

    rows = [
        Row("detkit (eager)", "infer", "fp32", 1, 100.0, 10.0, float("nan")),
        Row("detkit (onnxruntime)", "infer", "fp32", 1, 50.0, 20.0, float("nan")),
        Row("torchvision", "infer", "fp32", 1, 200.0, 5.0, float("nan")),
        Row("detkit (eager)", "infer", "bf16", 1, 100.0, 10.0, float("nan")),  # no peer: no ratio
    ]
    attach_ratios(rows)
    assert [r.ratio for r in rows] == [2.0, 4.0, None, None]
    cells = _rows(format_table(rows))
    assert [r[-1] for r in cells[1:]] == ["2.00x", "4.00x", "", ""]


def test_p10_and_drift_of_the_timed_iterations(monkeypatch):
    """The table's p10 column and the drift that makes the tool warn: a machine that slows down
    halfway shows as the quarters' medians apart, while p10 stays the undisturbed speed."""
    import itertools

    from detkit import benchmark as bm

    assert bm.percentile([4.0, 1.0, 3.0, 2.0, 5.0], 0.1) == pytest.approx(1.4)
    assert bm.drift([1.0] * 8) == 0.0 and bm.drift([1.0, 1.0, 1.0]) == 0.0
    steady_then_slow = [0.1] * 20 + [0.15] * 20
    assert bm.drift(steady_then_slow) == pytest.approx(0.5)
    clock = itertools.cycle(steady_then_slow)
    monkeypatch.setattr(bm, "timed", lambda fn, device: next(clock))
    (row,) = bm.measure_side_by_side(
        {"x": lambda: None}, "infer", "fp32", 2, torch.device("cpu"), warmup=0, iters=40
    )
    assert row.ms_per_image == pytest.approx(62.5) and row.p10_ms_per_image == pytest.approx(50)
    assert row.drift == pytest.approx(0.5) and row.iterations == 40
    assert "p10 ms/img" in bm.format_table([row]) and "50.00" in bm.format_table([row])
