"""Side-by-side timing of detkit and torchvision, detectron2 or mmdetection (inference, training
step, data loading).

Timing rule: warm-up iterations first, then every iteration is timed with the device synchronised
before and after; the table reports the median and the 10th percentile (p10). On a shared machine
(a cloud VM) the CPU's speed may wander by tens of percent within seconds: the median then moves
between two runs, while p10 (the speed when nothing interfered) repeats. ``Row.drift`` says how far
the medians of the run's four quarters were apart. Both models get the same weights and the same
input tensors in the same run. Precision is the timed function's business: detkit inference runs
through ``make_predictor`` (as tools/test.py), everything else under
``detkit.modeling.precision.autocast``.

On a CPU the times also depend on what else runs: ``OtherProcesses`` measures how much CPU other
processes took while timing, so that a run on a busy machine says so.
"""

from __future__ import annotations

import logging
import os
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
    iterations: int = 0  # timed iterations behind the median
    p10_ms_per_image: float = float(
        "nan"
    )  # 10th percentile of the per-image times (NaN: not timed)
    drift: float = 0.0  # (slowest / fastest) - 1 over the medians of the timed iterations' quarters


def percentile(values: List[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, interpolated between the two nearest ranks."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def drift(times: List[float], parts: int = 4) -> float:
    """How much the speed wandered while timing: the medians of ``parts`` consecutive slices of
    ``times``, (slowest / fastest) - 1; 0 for fewer than 2 iterations per slice."""
    n = len(times) // parts
    if n < 2:
        return 0.0
    medians = [statistics.median(times[i * n : (i + 1) * n]) for i in range(parts)]
    return max(medians) / min(medians) - 1


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
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
    iterations and, when fast, enough more to fill ``min_seconds`` (at most 100x ``iters``): the
    median of a few fast iterations moves noticeably between two runs on a CPU."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times: Dict[str, List[float]] = {n: [] for n in names}
    peak: Dict[str, float] = {n: float("nan") for n in names}  # NaN: not measured (CPU)
    rounds = 0
    while rounds < iters or (
        min(sum(t) for t in times.values()) < min_seconds and rounds < 100 * iters
    ):
        for name in names[rounds % len(names) :] + names[: rounds % len(names)]:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times[name].append(timed(fns[name], device))
            if device.type == "cuda":
                used = torch.cuda.max_memory_allocated(device) / 2**20
                peak[name] = used if peak[name] != peak[name] else max(peak[name], used)
        rounds += 1
    rows = []
    for name in names:
        median = statistics.median(times[name])
        rows.append(
            Row(
                name,
                mode,
                precision,
                batch,
                1000 * median / batch,
                batch / median,
                peak[name],
                iterations=len(times[name]),
                p10_ms_per_image=1000 * percentile(times[name], 0.1) / batch,
                drift=drift(times[name]),
            )
        )
    return rows


class OtherProcesses:
    """``with OtherProcesses() as other: ...`` then ``other.cores``: the CPU cores that other
    processes kept busy meanwhile, on average (all busy time of /proc/stat minus this process's
    own CPU time; None where /proc/stat does not exist). Two runs of one benchmark agree only
    when this is near 0: on a machine with few cores, one core busy elsewhere slows every thread
    of the timed model that must wait for it."""

    cores: Optional[float] = None

    def __enter__(self) -> "OtherProcesses":
        self._start = (_busy_seconds(), _own_seconds(), time.perf_counter())
        return self

    def __exit__(self, *exc) -> None:
        busy0, own0, t0 = self._start
        busy1, wall = _busy_seconds(), time.perf_counter() - t0
        if busy0 is not None and busy1 is not None and wall > 0:
            self.cores = max(0.0, (busy1 - busy0 - (_own_seconds() - own0)) / wall)


def _busy_seconds() -> Optional[float]:
    """CPU seconds all processes have spent (every core, not idle/iowait) since boot."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


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
    headers = [
        "impl",
        "mode",
        "prec",
        "batch",
        "ms/img",
        "p10 ms/img",
        "img/s",
        "peak MB",
        "detkit speedup",
    ]
    cells = [
        [
            r.impl,
            r.mode,
            r.precision,
            r.batch,
            f"{r.ms_per_image:.2f}",
            "" if r.p10_ms_per_image != r.p10_ms_per_image else f"{r.p10_ms_per_image:.2f}",
            f"{r.images_per_s:.2f}",
            "" if r.peak_mem_mb != r.peak_mem_mb else f"{r.peak_mem_mb:.0f}",  # NaN: not measured
            f"{r.ratio:.2f}x" if r.ratio is not None else "",
        ]
        for r in rows
    ]
    return table(headers, cells)


def attach_ratios(rows: List[Row]) -> None:
    """Each detkit row's img/s (``detkit`` or ``detkit (<backend>)``) divided by the compared
    framework's (torchvision, detectron2 or mmdetection) img/s in the same mode/precision/batch."""
    ref: Dict[tuple, Row] = {
        (r.mode, r.precision, r.batch): r for r in rows if not r.impl.startswith("detkit")
    }
    for r in rows:
        other = ref.get((r.mode, r.precision, r.batch))
        if r.impl.startswith("detkit") and other is not None:
            r.ratio = r.images_per_s / other.images_per_s
