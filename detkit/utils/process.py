"""Process-wide settings the tools make once, at start-up (this module must not import torch).

``quiet_idle_threads()`` has to run before torch loads OpenMP: idle OpenMP threads then sleep
instead of spinning. Spinning threads win a little on an otherwise idle machine, but beside any
other busy process (another tool, a data loader) they take the cores that process needs and make
both far slower (docs/benchmarks.md). ``OMP_WAIT_POLICY=ACTIVE`` in the environment keeps spinning.
"""

from __future__ import annotations

import os


def quiet_idle_threads() -> None:
    """Idle OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``) unless the environment says
    otherwise; effective only before torch is imported."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for the next allocation instead of handing it back to the
    system (``mallopt``: a fixed 32 MiB mmap threshold, the largest glibc allows, and a 1 GiB trim
    threshold). By default glibc adjusts its thresholds as the process runs and may return and
    re-fault the per-image buffers on every image: thousands of minor page faults per image that
    this avoids, at the same peak memory. Returns False where there is no glibc ``mallopt``
    (macOS, musl: nothing to do)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def prepare_inference_process() -> None:
    """What the inference tools (test, video, benchmark) do first: sleeping idle threads and freed
    memory kept for the next image, so each tool runs what the benchmark times."""
    quiet_idle_threads()
    keep_freed_memory()
