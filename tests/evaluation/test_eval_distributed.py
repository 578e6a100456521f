"""Evaluators under torch.distributed (2 CPU processes, gloo): results are gathered to rank 0."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from reference_cases import FAKE_BBOX, VAL100, VAL100_STATS
from synthetic_coco import stats_of

from detkit.evaluation import COCOEvaluator, VOCEvaluator

WORLD = 2


def _coco_shard(testdata: Path, rank: int):
    gt = json.loads((testdata / VAL100).read_text())
    dets = json.loads((testdata / FAKE_BBOX).read_text())
    cat_ids = sorted(c["id"] for c in gt["categories"])
    image_ids = sorted(im["id"] for im in gt["images"])[rank::WORLD]  # a non-padding split
    samples, outputs = [], []
    for image_id in image_ids:
        mine = [d for d in dets if d["image_id"] == image_id]
        xywh = np.array([d["bbox"] for d in mine], np.float64).reshape(-1, 4)
        samples.append({"image_id": image_id})
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        outputs.append(
            {
                "boxes": torch.from_numpy(xyxy),
                "scores": torch.tensor([d["score"] for d in mine], dtype=torch.float64),
                "labels": torch.tensor(
                    [cat_ids.index(d["category_id"]) for d in mine], dtype=torch.long
                ),
            }
        )
    return cat_ids, samples, outputs


def _worker(rank: int, testdata: str, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        cat_ids, samples, outputs = _coco_shard(Path(testdata), rank)
        coco = COCOEvaluator(str(Path(testdata) / VAL100), cat_ids, [str(c) for c in cat_ids])
        coco.process(samples, outputs)
        records = [
            {
                "image_id": r,
                "boxes": np.array([[0, 0, 10, 10]], np.float32),
                "labels": np.zeros(1, np.int64),
            }
            for r in range(WORLD)
        ]
        voc = VOCEvaluator(records, ["thing"])
        voc.process(
            [{"image_id": rank}],
            [
                {
                    "boxes": np.array([[0, 0, 10, 10]]),
                    "scores": np.ones(1),
                    "labels": np.zeros(1, np.int64),
                }
            ],
        )
        result = {"coco": coco.evaluate(), "voc": voc.evaluate()}
        with open(Path(out_dir) / f"rank{rank}.json", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(
    not dist.is_available() or "fork" not in mp.get_all_start_methods(),
    reason="needs torch.distributed and the fork start method",
)
def test_gather_to_rank0(testdata, tmp_path):
    mp.start_processes(
        _worker,
        args=(str(testdata), str(tmp_path / "init"), str(tmp_path)),
        nprocs=WORLD,
        start_method="fork",
    )  # fork: no second torch import, keeps the test quick
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    np.testing.assert_allclose(stats_of(rank0["coco"]), VAL100_STATS, rtol=0, atol=1e-6)
    assert rank0["voc"]["mAP"] == 1.0  # both images' detections arrived
    assert rank1 == {"coco": {}, "voc": {}}
