"""Threads for CPU work that PyTorch's kernels leave on one core (torchvision's RoIAlign, RoIPool
and NMS on the CPU are single-threaded and release the GIL).

``run_side_by_side(calls)`` runs independent pieces of work at once; ``cpu_split(tensor, items,
min_items)`` says into how many pieces to cut it: torch's thread count of the calling thread (a
``ParallelImages`` worker has its share), 1 off the CPU or while tracing. ``ThreadPool`` is made
again in a forked child. ``physical_cores`` and ``cpu_description`` read /proc/cpuinfo.
"""

from __future__ import annotations

import functools
import os
import platform
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")
MAX_THREADS = 8  # the most threads either kind of side-by-side work uses


class ThreadPool:
    """A ThreadPoolExecutor made on first use, and made again in a forked child: threads do not
    survive ``fork``, and the parent's executor would queue the child's work forever."""

    def __init__(self, workers: int, name: str):
        self.workers, self.name = workers, name
        self._executor: Optional[ThreadPoolExecutor] = None
        self._pid = 0
        self._lock = threading.Lock()

    def get(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None or self._pid != os.getpid():
                self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix=self.name)
                self._pid = os.getpid()
            return self._executor

    def shutdown(self) -> None:
        if self._executor is not None and self._pid == os.getpid():
            self._executor.shutdown(wait=False)


_shared_pool = ThreadPool(MAX_THREADS - 1, "side-by-side")


def run_side_by_side(calls: Sequence[Callable[[], T]]) -> List[T]:
    """Each zero-argument call on its own thread (the caller runs the first, a shared pool the
    others), the caller's grad and inference mode carried into the workers; the results in order.
    For single-threaded CPU kernels that release the GIL (torchvision's RoIAlign/RoIPool): each call
    computes its own part, so the results are those of the calls one after another. The calls must
    not wait on other work of the shared pool (``ParallelImages`` keeps its own pool for that)."""
    if len(calls) > MAX_THREADS:
        raise ValueError(f"{len(calls)} calls side by side; at most {MAX_THREADS}")
    if len(calls) < 2:
        return [call() for call in calls]
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def in_caller_mode(call: Callable[[], T]) -> T:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return call()

    pool = _shared_pool.get()
    futures = [pool.submit(in_caller_mode, call) for call in calls[1:]]
    first = calls[0]()
    return [first] + [f.result() for f in futures]


def cpu_split(tensor: Tensor, items: int, min_items: int) -> int:
    """Pieces to cut ``items`` independent units of CPU work on ``tensor`` into: torch's thread
    count (of the calling thread), at least ``min_items`` units each, at most MAX_THREADS; 1 for
    other devices (their kernels are parallel) and while tracing (an export keeps one call)."""
    if tensor.device.type != "cpu" or torch.jit.is_tracing():
        return 1
    return max(1, min(torch.get_num_threads(), items // min_items, MAX_THREADS))


@functools.lru_cache(maxsize=8)
def _cpuinfo_blocks(cpuinfo: str) -> Tuple[Dict[str, str], ...]:
    """One {field: value} dict per logical CPU of ``cpuinfo`` (none when it cannot be read); read
    once per file (the onnxruntime backend asks for the physical cores with every image)."""
    try:
        with open(cpuinfo) as f:
            blocks = f.read().strip().split("\n\n")
    except OSError:
        return ()
    return tuple(
        {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in block.splitlines())}
        for block in blocks
    )


def physical_cores(cpuinfo: str = "/proc/cpuinfo") -> int:
    """Physical cores this process may run on: unique (physical id, core id) pairs of
    ``cpuinfo`` among the CPUs of its affinity mask; else the number of those CPUs, else
    os.cpu_count()."""
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        allowed = None
    cores = set()
    for fields in _cpuinfo_blocks(cpuinfo):
        if "processor" not in fields or "core id" not in fields:
            continue
        if allowed is None or int(fields["processor"]) in allowed:
            cores.add((fields.get("physical id", "0"), fields["core id"]))
    return len(cores) or (len(allowed) if allowed else os.cpu_count() or 1)


def cpu_description(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU for a benchmark's header: model name, physical cores, and the vector/matrix units
    that decide float32 and bf16 speed, e.g. "Intel(R) Xeon(R) Processor, 2 physical cores, AVX-512,
    AMX"."""
    blocks = _cpuinfo_blocks(cpuinfo)
    first = blocks[0] if blocks else {}
    name = first.get("model name") or platform.processor() or "CPU"
    flags = set(first.get("flags", "").split())
    units = [unit for unit, flag in (("AVX2", "avx2"), ("AVX-512", "avx512f")) if flag in flags]
    units = units[-1:] + (["AMX"] if "amx_bf16" in flags else [])
    return ", ".join([name, f"{physical_cores(cpuinfo)} physical cores"] + units)
