"""Process-group setup from torchrun's environment, DDP, and the tensor collectives of the training loop.

``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them detkit runs as
one process. Backend: NCCL when CUDA is available, gloo on CPU. Every helper also works (as a no-op)
without an initialised process group, so single-process code paths need no special cases. The rank
queries and object collectives that data and evaluation share live in ``detkit.utils.distributed``.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence

import torch
import torch.distributed as dist

from detkit.errors import ConfigError, TrainingError
from detkit.utils.device import resolve_device

# re-exported: the engine's modules import every collective from here
from detkit.utils.distributed import (  # noqa: F401
    all_gather_objects,
    broadcast_object,
    get_world_size,
    is_main_process,
)

logger = logging.getLogger("detkit")


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", timeout_min: float = 30.0) -> DistContext:
    """Initialise from torchrun's environment variables (no-op for a single process) and pick the
    device: ``cuda:<LOCAL_RANK>`` when CUDA is available (``device="auto"``), else CPU; "cuda"
    without a CUDA device is a ``ConfigError`` (see ``detkit.utils.device.resolve_device``)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = resolve_device(device).type == "cuda"
    if use_cuda:
        # LOCAL_WORLD_SIZE (set by torchrun) makes every process of the node fail alike, so rank 0
        # reports it; LOCAL_RANK alone would fail only the ranks beyond the device count
        per_node = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), local_rank + 1)
        if per_node > torch.cuda.device_count():
            raise ConfigError(
                f"{per_node} processes per node but only {torch.cuda.device_count()} CUDA "
                "devices are visible; start at most that many (torchrun --nproc-per-node)"
            )
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        kwargs = {"device_id": dev} if use_cuda else {}
        timeout = datetime.timedelta(minutes=timeout_min)
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            kwargs["store"] = _attempt_store(rank, world_size, timeout)
        dist.init_process_group(
            backend, rank=rank, world_size=world_size, timeout=timeout, **kwargs
        )
        logger.info(
            "distributed: rank %d of %d (local rank %d), backend %s",
            rank,
            world_size,
            local_rank,
            backend,
        )
    return DistContext(rank, world_size, local_rank, dev)


def _attempt_store(rank: int, world_size: int, timeout: datetime.timedelta) -> dist.Store:
    """The store of torchrun's agent, under a prefix that only this start of the workers uses.

    torchrun (c10d rendezvous) keeps one store for the whole job and gives every restart of the
    workers the same one, with the keys the killed workers wrote still in it. ``init_process_group``
    on it would read a dead rank's gloo address or a finished barrier's counter (restarts failed
    with "Gloo connectFullMesh ... Connection refused", or hung). ``TORCHELASTIC_RESTART_COUNT``
    cannot name the start: each node's agent counts its own restarts. So rank 0 draws a new random
    prefix and hands it to each rank in answer to the random nonce that rank just wrote; an answer
    keyed by a nonce drawn in this process cannot be a dead worker's."""
    store = dist.TCPStore(
        host_name=os.environ["MASTER_ADDR"],
        port=int(os.environ["MASTER_PORT"]),
        world_size=world_size,
        is_master=False,
        timeout=timeout,
    )
    base = "detkit/start"
    if rank != 0:
        nonce = uuid.uuid4().hex
        store.set(f"{base}/hello/{rank}", nonce)
        prefix = store.get(f"{base}/reply/{nonce}").decode()  # waits for rank 0
        store.set(f"{prefix}joined/{rank}", "1")
        return dist.PrefixStore(prefix, store)
    prefix = f"detkit/{uuid.uuid4().hex}/"
    answered: set = set()
    waiting = set(range(1, world_size))
    deadline = time.monotonic() + timeout.total_seconds()
    # a rank's hello key may still hold a dead worker's nonce: answer every nonce seen until the
    # rank says (under the new prefix) that it has the answer
    while waiting:
        for r in sorted(waiting):
            hello = f"{base}/hello/{r}"
            if store.check([hello]):
                nonce = store.get(hello).decode()
                if nonce not in answered:
                    answered.add(nonce)
                    store.set(f"{base}/reply/{nonce}", prefix)
        waiting = {r for r in waiting if not store.check([f"{prefix}joined/{r}"])}
        if waiting and time.monotonic() > deadline:
            raise TrainingError(
                f"rank(s) {sorted(waiting)} did not join the process group within "
                f"{timeout.total_seconds() / 60:.0f} minutes (torchrun store "
                f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']})"
            )
        if waiting:
            time.sleep(0.02)
    return dist.PrefixStore(prefix, store)


def wrap_ddp(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when several processes run, else ``model`` itself.

    No unused-parameter search: every loss term is connected to every trainable parameter (with a
    zero weight when an image has no positives), so each rank's backward reaches every parameter
    and no rank waits for a gradient another rank never produces. Buffers are not broadcast: the
    frozen-BN/GN buffers never change, and per-rank BN statistics are what SyncBN is for.
    """
    if not ctx.distributed:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=ids, broadcast_buffers=False, find_unused_parameters=False
    )


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over all processes (the tensor itself without distributed). A CPU tensor makes the
    round trip through the GPU when the backend (NCCL) needs it."""
    if get_world_size() == 1:
        return tensor
    device = _collective_device()
    work = tensor.to(device)
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)


def raise_if_any_rank_failed(error: Optional[BaseException], what: str) -> None:
    """Every rank calls this after a step that may fail (``error``: this rank's exception, or
    None); if any rank failed, every rank raises, so no rank is left waiting in a collective.

    The failing rank re-raises its own error; the others raise :class:`TrainingError` quoting it,
    so rank 0 -- the only rank on the console -- prints the cause even when another rank failed.
    """
    if get_world_size() == 1:
        if error is not None:
            raise error
        return
    mine = None if error is None else f"{type(error).__name__}: {error}"
    failures = [(r, m) for r, m in enumerate(all_gather_objects(mine)) if m is not None]
    if error is not None:
        raise error
    if failures:
        rank, message = failures[0]
        raise TrainingError(f"{what} failed on rank {rank}: {message}")


def run_on_all_ranks(fn: Callable[[], Any], what: str) -> Any:
    """Run ``fn`` on every rank; if it fails on any rank, raise on every rank (no rank is left
    waiting in a collective for one that died)."""
    error: Optional[BaseException] = None
    try:
        result = fn()
    except Exception as e:  # re-raised below, after the other ranks have heard of it
        error, result = e, None
    raise_if_any_rank_failed(error, what)  # the other ranks raise TrainingError quoting it
    return result


def mean_over_ranks(values: Sequence[float]) -> List[float]:
    """The mean of each value over the ranks (in float64), so every rank takes the same decision
    from them; the values themselves for one process."""
    if get_world_size() == 1:
        return [float(v) for v in values]
    summed = all_reduce_sum(torch.tensor([float(v) for v in values], dtype=torch.float64))
    return [float(v) / get_world_size() for v in summed.tolist()]


def reduce_flag(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank (e.g. "my loss is not finite")."""
    return bool(all_reduce_sum(torch.tensor([1.0 if flag else 0.0])).item() > 0)


def _collective_device() -> torch.device:
    if get_world_size() > 1 and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
