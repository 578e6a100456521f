"""Inference over a dataset (one shard per process) feeding an evaluator."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Dict, List, Optional

import torch
from torch import nn
from tqdm import tqdm

from .distributed import all_gather_objects, broadcast_object, get_world_size, is_main_process

logger = logging.getLogger("detkit")


def bar_interval() -> float:
    """Seconds between progress-bar refreshes: smooth on a terminal, sparse in a log file."""
    return 0.5 if sys.stderr.isatty() else 30.0


def check_each_image_once(image_ids: List[int], expected: int) -> None:
    """Every image of the split predicted exactly once over all processes (else the metrics lie)."""
    gathered = [i for part in all_gather_objects(image_ids) for i in part]
    if len(gathered) != len(set(gathered)):
        raise RuntimeError(
            f"{len(gathered) - len(set(gathered))} images were predicted more than once "
            "across processes; the test loader must use detkit.data's InferenceSampler"
        )
    if len(gathered) < expected:
        logger.warning(
            "predicted %d of %d images (unreadable images were skipped)", len(gathered), expected
        )


@torch.no_grad()
def run_inference(
    model: nn.Module, loader, evaluator, *, desc: str = "inference"
) -> Dict[str, Any]:
    """Predict every batch of ``loader`` and return ``evaluator.evaluate()`` on every rank.

    ``model`` is the predictor of ``detkit.modeling.build.build_predictor`` (multi-scale/flip
    testing and autocast are its business, not this loop's). It is put in eval mode and restored
    to its previous mode afterwards. Outputs move to the CPU before the evaluator sees them, so GPU
    memory does not grow with the dataset.
    """
    was_training = model.training
    model.eval()
    evaluator.reset()
    image_ids: List[int] = []
    start, n_images = time.perf_counter(), 0
    try:
        bar = tqdm(
            loader,
            desc=desc,
            unit="batch",
            disable=not is_main_process(),
            dynamic_ncols=True,
            leave=False,
            mininterval=bar_interval(),
        )
        for batch in bar:
            outputs = model(batch)
            outputs = [
                {k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in o.items()}
                for o in outputs
            ]
            evaluator.process(batch, outputs)
            image_ids += [int(s["image_id"]) for s in batch]
            n_images += len(batch)
    finally:
        model.train(was_training)
    elapsed = time.perf_counter() - start
    logger.info(
        "%s: %d images in %.1f s (%.1f img/s per process, %d processes)",
        desc,
        n_images,
        elapsed,
        n_images / max(elapsed, 1e-9),
        get_world_size(),
    )
    check_each_image_once(image_ids, len(loader.dataset))
    metrics = evaluator.evaluate()  # rank 0 returns the metrics, other ranks {}
    return broadcast_object(metrics)


def primary_metric(metrics: Dict[str, Any]) -> Optional[str]:
    """The number that decides ``best.pth``: COCO ``AP``, else VOC ``mAP``."""
    for key in ("AP", "mAP"):
        if isinstance(metrics.get(key), (int, float)):
            return key
    return None


def scalar_metrics(metrics: Dict[str, Any]) -> Dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
