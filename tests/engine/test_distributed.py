"""Two CPU processes (gloo) in one test: DDP does not hang when one rank has no positives, and a
non-finite loss on one rank stops both ranks at the same iteration. And the store prefix each start
of torchrun's workers sets its process group up under (``engine.distributed._attempt_store``)."""

import json
import os
import threading
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


def _start(world: int, timeout_s: float = 30.0) -> list:
    """One start of ``world`` workers' store set-up (threads): each rank's store."""
    from datetime import timedelta

    from detkit.engine.distributed import _attempt_store

    stores = [None] * world

    def run(rank):
        stores[rank] = _attempt_store(rank, world, timedelta(seconds=timeout_s))

    threads = [threading.Thread(target=run, args=(r,)) for r in reversed(range(world))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s + 5)
    assert all(s is not None for s in stores), "a rank did not get its store"
    return stores


def test_each_start_of_the_workers_gets_a_store_prefix_of_its_own(monkeypatch):
    """torchrun's agent keeps one store across restarts; a killed start's keys (here rank 1's
    nonce and the answer it got, and a key of its process group) must not reach the next one."""
    from datetime import timedelta

    import torch.distributed as dist

    server = dist.TCPStore(
        "127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=30)
    )
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(server.port))
    server.set("detkit/start/hello/1", "dead")
    server.set("detkit/start/reply/dead", "detkit/old/")
    server.set("detkit/old/rank_0", "the dead rank 0's address")

    first = _start(3)
    first[0].set("rank_0", "alive")
    assert [s.get("rank_0") for s in first] == [b"alive"] * 3  # one prefix for the start
    assert server.get("detkit/old/rank_0") == b"the dead rank 0's address"

    second = _start(3)  # a restart: the first start's keys are still in the store
    assert not any(s.check(["rank_0"]) for s in second)
    second[2].set("rank_0", "restarted")
    assert [s.get("rank_0") for s in second] == [b"restarted"] * 3
    assert first[1].get("rank_0") == b"alive"
