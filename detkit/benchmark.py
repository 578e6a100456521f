"""Side-by-side timing of detkit and torchvision (inference, training step, data loading).

Timing rule: warm-up iterations first, then every iteration is timed with the device synchronised
before and after; the table reports the median. Both models get the same weights and the same
input tensors in the same run. Precision is the timed function's business: detkit inference runs
through ``build_predictor`` (as tools/test.py), everything else under
``detkit.modeling.precision.autocast``.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

from detkit.evaluation.common import format_table as table

logger = logging.getLogger("detkit")


@dataclass
class Row:
    impl: str
    mode: str
    precision: str
    batch: int
    ms_per_image: float
    images_per_s: float
    peak_mem_mb: float
    ratio: Optional[float] = None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def measure_side_by_side(
    fns: Dict[str, Callable[[], object]],
    mode: str,
    precision: str,
    batch: int,
    device: torch.device,
    warmup: int,
    iters: int,
    min_seconds: float = 0.0,
) -> List[Row]:
    """One row per implementation, timed in alternation (a round times each once, the order
    rotating): a machine that speeds up or slows down during the run (turbo, another process, the
    allocator warming up) then affects every implementation alike. Each gets at least ``iters``
    iterations and, when fast, enough more to fill ``min_seconds`` (at most 10x ``iters``): the
    median of a few fast iterations moves by 10-20% between two runs on a CPU."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times: Dict[str, List[float]] = {n: [] for n in names}
    peak: Dict[str, float] = {n: float("nan") for n in names}  # NaN: not measured (CPU)
    rounds = 0
    while rounds < iters or (
        min(sum(t) for t in times.values()) < min_seconds and rounds < 10 * iters
    ):
        for name in names[rounds % len(names) :] + names[: rounds % len(names)]:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times[name].append(_timed(fns[name], device))
            if device.type == "cuda":
                used = torch.cuda.max_memory_allocated(device) / 2**20
                peak[name] = used if peak[name] != peak[name] else max(peak[name], used)
        rounds += 1
    rows = []
    for name in names:
        median = statistics.median(times[name])
        rows.append(
            Row(name, mode, precision, batch, 1000 * median / batch, batch / median, peak[name])
        )
    return rows


def measure(
    name: str,
    mode: str,
    precision: str,
    batch: int,
    fn: Callable[[], object],
    device: torch.device,
    warmup: int,
    iters: int,
    min_seconds: float = 0.0,
) -> Row:
    """One implementation alone (the size / batch / proposals sweep)."""
    fns = {name: fn}
    return measure_side_by_side(fns, mode, precision, batch, device, warmup, iters, min_seconds)[0]


def random_images(
    batch: int, height: int, width: int, device: torch.device, seed: int = 0
) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8).to(device)
        for _ in range(batch)
    ]


def random_targets(batch: int, height: int, width: int, num_classes: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batch):
        xy = torch.rand(8, 2, generator=g) * torch.tensor([width * 0.7, height * 0.7])
        wh = 16 + torch.rand(8, 2, generator=g) * torch.tensor([width * 0.3, height * 0.3])
        out.append(
            (
                torch.cat([xy, xy + wh], 1).to(device),
                torch.randint(0, num_classes, (8,), generator=g).to(device),
            )
        )
    return out


def format_table(rows: List[Row]) -> str:
    """The rows as detkit's one plain table (that of the evaluation and training reports)."""
    # speedup: detkit's img/s over the compared framework's (> 1: detkit is faster); peak GPU
    # memory is only measured on CUDA and left empty elsewhere
    headers = ["impl", "mode", "prec", "batch", "ms/img", "img/s", "peak MB", "detkit speedup"]
    cells = [
        [
            r.impl,
            r.mode,
            r.precision,
            r.batch,
            f"{r.ms_per_image:.2f}",
            f"{r.images_per_s:.2f}",
            "" if r.peak_mem_mb != r.peak_mem_mb else f"{r.peak_mem_mb:.0f}",  # NaN: not measured
            f"{r.ratio:.2f}x" if r.ratio is not None else "",
        ]
        for r in rows
    ]
    return table(headers, cells)


def attach_ratios(rows: List[Row]) -> None:
    """detkit img/s divided by the compared framework's (torchvision or detectron2) img/s, on the
    detkit row of the same mode/precision/batch."""
    ref: Dict[tuple, Row] = {(r.mode, r.precision, r.batch): r for r in rows if r.impl != "detkit"}
    for r in rows:
        other = ref.get((r.mode, r.precision, r.batch))
        if r.impl == "detkit" and other is not None:
            r.ratio = r.images_per_s / other.images_per_s
