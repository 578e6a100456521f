"""The CPU this process runs on, read from /proc/cpuinfo: its physical cores (how many threads
are worth running: images side by side, onnxruntime's intra-op threads) and a one-line description
for a benchmark's header. Reading only: nothing here starts a thread or changes a setting.
"""

from __future__ import annotations

import functools
import os
import platform
from typing import Dict, Tuple


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
