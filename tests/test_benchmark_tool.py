"""CPU smoke test of tools/benchmark.py: the table comes out, with the torchvision column and ratios."""

import sys

from tests.conftest import ROOT

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
