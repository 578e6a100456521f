"""Two CPU processes (gloo) in one test: DDP does not hang when one rank has no positives, and a
non-finite loss on one rank stops both ranks at the same iteration."""

import json
import os
import time

import pytest
import torch
import torch.multiprocessing as mp

from tests.engine.helpers import TINY_MODEL, free_port

WORLD = 2


def _sample(with_boxes: bool) -> dict:
    g = torch.Generator().manual_seed(0)
    boxes = [[8.0, 10.0, 40.0, 44.0]] if with_boxes else []
    return {
        "image": torch.randint(0, 255, (3, 64, 80), generator=g, dtype=torch.uint8),
        "image_id": 1,
        "height": 64,
        "width": 80,
        "gt_boxes": torch.tensor(boxes).reshape(-1, 4),
        "gt_labels": torch.tensor([1] * len(boxes), dtype=torch.int64),
    }


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    from detkit.config import load_config
    from detkit.engine import Trainer
    from detkit.engine.checkpoint import Checkpointer
    from detkit.engine.distributed import (
        all_gather_objects,
        cleanup_distributed,
        init_distributed,
        wrap_ddp,
    )
    from detkit.errors import TrainingError
    from detkit.modeling.build import build_model

    ctx = init_distributed(device="cpu", timeout_min=1.0)  # a hang becomes an error within a minute
    report = {}
    try:
        torch.manual_seed(0)
        model = wrap_ddp(build_model(load_config(None, TINY_MODEL)), ctx)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        for _ in range(2):  # rank 1 never has a positive anchor or RoI
            losses = model([_sample(with_boxes=rank == 0)])
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
        checksum = float(sum(p.double().sum() for p in model.parameters()))
        report["checksums"] = all_gather_objects(checksum)

        trainer = Trainer.__new__(Trainer)  # only what _check_losses and its advice need
        trainer.checkpointer = Checkpointer(out_dir)
        trainer.cfg, trainer.out, trainer.last_saved = load_config(None, TINY_MODEL), out_dir, None
        values = {"loss_cls": 0.5, "loss_box": float("nan") if rank == 1 else 0.1}
        try:
            trainer._check_losses(7, values, None)
        except TrainingError as e:
            report["error"] = str(e)
        report["checkpointer_disabled"] = trainer.checkpointer.disabled_reason is not None
    finally:
        cleanup_distributed()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)


@pytest.mark.slow
def test_two_ranks_no_positives_and_divergence(tmp_path):
    ctx = mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail("the 2-process run hung")
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    checksums = reports[0]["checksums"]
    assert (
        len(checksums) == 2 and checksums[0] == checksums[1]
    )  # gradients were all-reduced, weights agree
    for report in reports:  # both ranks stop, at the same iteration, naming the term and the rank
        assert "non-finite loss at iteration 7: loss_box=nan (rank 1)" in report["error"]
        assert report["checkpointer_disabled"]
