"""Several images of one call at once on the CPU (``test.parallel_images``).

On a CPU with few cores the convolutions of one image do not keep every core busy all the time:
each operator's threads meet at a barrier, waking sleeping threads costs time, and RoIAlign, NMS and
the Python between operators run on one core. Running the images of a batch side by side, each in
its own thread with its share of the cores (two images with one thread each on 2 cores), keeps the
cores busy instead. The results are the same (each image runs the same operators; only the split of
work among threads differs, which changes nothing in detkit's CPU kernels beyond float rounding).

``ParallelImages`` wraps either backend's predictor; it changes nothing for a call with one image.
"""

from __future__ import annotations

import threading
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from detkit.config.config import DEFAULTS
from detkit.errors import ConfigError
from detkit.utils.threads import MAX_THREADS, ThreadPool, physical_cores


def resolve_parallel_images(cfg, device: torch.device, cores: Optional[int] = None) -> int:
    """``test.parallel_images`` made concrete: auto = the physical cores on the CPU (capped at 8),
    1 on other devices (a GPU runs a batch as one call)."""
    value = cfg.test.parallel_images
    if isinstance(value, str) and value.strip().isdigit():  # a command-line override: "2"
        value = int(value)
    if value == "auto":
        if torch.device(device).type != "cpu":
            return 1
        if cores is None:
            cores = physical_cores()
        return max(1, min(int(cores), MAX_THREADS))
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"config key 'test.parallel_images' ({cfg.origin('test.parallel_images')}): "
            f"'{value}' is not auto or an integer >= 1 (1 = one image at a time)"
        )
    return int(value)


def batch_side_by_side(cfg, predictor: nn.Module):
    """``cfg`` with test.ims_per_batch = the images ``predictor`` runs side by side, when it is a
    ``ParallelImages`` and test.ims_per_batch was left to defaults.yaml (tools/test.py and the
    trainer's evaluation on the CPU); else ``cfg`` itself. Same results, more images per second."""
    if not isinstance(predictor, ParallelImages) or cfg.origin("test.ims_per_batch") != DEFAULTS:
        return cfg
    return cfg.with_overrides([f"test.ims_per_batch={predictor.images}"])


class ParallelImages(nn.Module):
    """``predictor(samples)`` with up to ``images`` samples predicted at once, each in its own
    thread with ``max(1, threads // n)`` of the ``threads`` CPU threads (torch's, which the
    onnxruntime backend follows); outputs in the order of ``samples``. Grad/inference mode and
    autocast are per thread in PyTorch: each worker takes the caller's grad and inference mode, and
    the wrapped predictor enters its own autocast."""

    def __init__(self, predictor: nn.Module, images: int, threads: Optional[int] = None):
        super().__init__()
        self.predictor = predictor
        self.images = int(images)
        self.threads = int(threads or torch.get_num_threads())
        self.backend = getattr(predictor, "backend", "eager")
        self._pool = ThreadPool(self.images, "image")
        self._lock = threading.Lock()

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
        per_image = max(1, self.threads // n)
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
        parts = [samples[i::n] for i in range(n)]

        def run(part: List[dict]) -> List[Dict[str, Tensor]]:
            torch.set_num_threads(per_image)
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return [self.predictor([s])[0] for s in part]

        saved = torch.get_num_threads()
        with self._lock:  # one batch at a time through the pool
            try:
                results = list(self._pool.get().map(run, parts))
            finally:
                torch.set_num_threads(saved)  # the workers' setting is also torch's global one
        out: List[Optional[Dict[str, Tensor]]] = [None] * len(samples)
        for i, part in enumerate(results):
            out[i::n] = part
        return out  # type: ignore[return-value]

    def __del__(self):
        pool = self.__dict__.get("_pool")
        if pool is not None:
            pool.shutdown()
