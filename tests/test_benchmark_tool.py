"""CPU smoke test of tools/benchmark.py: the table comes out, with the torchvision column and ratios."""

import sys

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))


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
    out = capsys.readouterr().out
    assert (
        "detkit      infer  fp32" in out
        and "torchvision infer  fp32" in out
        and "x" in out.split("detkit")[-1]
    )
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
    out = capsys.readouterr().out
    assert out.count("detkit      train") == 2


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
