"""Several images of one call at once on the CPU (``test.parallel_images``), and the batch size
that goes with it (``test.ims_per_batch``).

On a CPU with few cores the convolutions of one image do not keep every core busy all the time:
each operator's threads meet at a barrier, waking sleeping threads costs time, and RoIAlign, NMS and
the Python between operators run on one core. Running the images of a batch side by side, each in
its own thread with its share of the cores (two images with one thread each on 2 cores), keeps the
cores busy instead. The results are those of one image at a time (each image runs the same
operators; only the split of work among threads differs, which changes nothing in detkit's CPU
kernels beyond float rounding). The measured gain is in docs/benchmarks.md.

This is the only place in detkit that runs the model in threads or changes torch's thread count;
the model itself is single-threaded and may be called from several threads at once.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from detkit.utils.threads import physical_cores

MAX_IMAGES = 8  # auto never runs more images side by side than this, whatever the core count


def resolve_parallel_images(cfg, device: torch.device, cores: Optional[int] = None) -> int:
    """``test.parallel_images`` made concrete: auto = the physical cores on the CPU (at most
    MAX_IMAGES), 1 on other devices (a GPU runs a batch as one call); an integer as given."""
    value = cfg.test.parallel_images  # auto | int >= 1, checked at load
    if value != "auto":
        return value
    if torch.device(device).type != "cpu":
        return 1
    return max(1, min(int(cores if cores is not None else physical_cores()), MAX_IMAGES))


def resolve_test_batch(cfg, device: torch.device, cores: Optional[int] = None) -> int:
    """``test.ims_per_batch`` made concrete, for every loader and tool that batches test images:
    auto = the images ``resolve_parallel_images`` runs side by side (1 off the CPU); an integer as
    given, however it was written."""
    value = cfg.test.ims_per_batch
    return resolve_parallel_images(cfg, device, cores) if value == "auto" else value


def with_test_batch(cfg, device: torch.device, images: Optional[int] = None):
    """``cfg`` with test.ims_per_batch made concrete by ``resolve_test_batch`` (``cfg`` itself when
    it already is), for code that reads the batch size from the config: the test loader of
    tools/test.py and of the trainer's evaluation. ``images``: the images the caller really runs
    side by side, when it decided otherwise than ``test.parallel_images`` alone (the trainer's
    evaluation under several processes runs one at a time), which ``auto`` then follows."""
    if images is not None and cfg.test.ims_per_batch == "auto":
        batch = images
    else:
        batch = resolve_test_batch(cfg, device)
    if cfg.test.ims_per_batch == batch:
        return cfg
    return cfg.with_overrides([f"test.ims_per_batch={batch}"])


class ParallelImages(nn.Module):
    """``predictor(samples)`` with up to ``images`` samples predicted at once: the samples dealt in
    turn to up to ``images`` worker threads, each predicting its share one sample at a time; outputs
    in the order of ``samples``. A call with one sample goes straight through, in the caller's
    thread.

    Each worker runs with ``max(1, threads // images)`` of the ``threads`` CPU threads (torch's;
    the onnxruntime backend follows torch's setting of the thread it runs in). In PyTorch (OpenMP)
    ``torch.set_num_threads`` sets the count of the calling thread, and also the count that threads
    started later begin with: so each worker sets its share once, when the pool starts all its
    workers together, and the caller then puts its own count back as the count for later threads.
    No call changes a thread count after that (so a call with fewer samples than ``images``
    leaves the other workers' threads unused). Grad/inference mode and autocast are per thread in
    PyTorch: each call carries the caller's grad and inference mode into the workers, and the
    wrapped predictor enters its own autocast.

    The pool is made on the first call with several samples, and made again in a process forked
    after that (threads do not survive ``fork``)."""

    def __init__(self, predictor: nn.Module, images: int, threads: Optional[int] = None):
        super().__init__()
        self.predictor = predictor
        self.images = int(images)
        self.threads = int(threads or torch.get_num_threads())
        self.threads_per_image = max(1, self.threads // self.images)
        self.backend = getattr(predictor, "backend", "eager")
        self._pool: Optional[Tuple[int, ThreadPoolExecutor]] = None  # (pid, pool)
        self._pool_lock = threading.Lock()

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            # e.g. the onnxruntime predictor's .path: the wrapper stands for the predictor
            return getattr(super().__getattr__("predictor"), name)

    def forward(self, samples: List[dict]) -> List[Dict[str, Tensor]]:
        n = min(self.images, len(samples))
        if n < 2:
            return self.predictor(samples)
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
        parts = [samples[i::n] for i in range(n)]

        def run(part: List[dict]) -> List[Dict[str, Tensor]]:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return [self.predictor([s])[0] for s in part]

        results = list(self.pool().map(run, parts))
        out: List[Optional[Dict[str, Tensor]]] = [None] * len(samples)
        for i, part in enumerate(results):
            out[i::n] = part
        return out  # type: ignore[return-value]

    def pool(self) -> ThreadPoolExecutor:
        """The worker threads of this process, each with its share of torch's threads."""
        with self._pool_lock:
            if self._pool is None or self._pool[0] != os.getpid():
                self._pool = (os.getpid(), self._start_workers())
            return self._pool[1]

    def _start_workers(self) -> ThreadPoolExecutor:
        share, callers = self.threads_per_image, torch.get_num_threads()
        pool = ThreadPoolExecutor(self.images, thread_name_prefix="detkit-image")
        started = threading.Barrier(self.images, timeout=60)

        def start() -> None:
            # a thread takes the count for new threads on its first torch call, not before: were
            # that after the caller's reset below, it would undo the share set here
            torch.get_num_threads()
            torch.set_num_threads(share)
            started.wait()  # every worker holds a task until all have started and set their share

        try:
            for task in [pool.submit(start) for _ in range(self.images)]:
                task.result()
        finally:
            torch.set_num_threads(callers)  # the count later threads start with, as it was
        return pool

    def __del__(self):
        pool = self.__dict__.get("_pool")
        if pool is not None and pool[0] == os.getpid():
            pool[1].shutdown(wait=False)
