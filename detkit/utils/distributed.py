"""Rank queries and object collectives shared by data, evaluation and the engine.

Each helper is a no-op without an initialised process group, so single-process code needs no special
cases. Process-group setup (torchrun's environment, DDP) stays in ``detkit.engine.distributed``.

``torch.distributed`` is looked up in ``sys.modules`` instead of imported: a process that never
imported torch cannot have a process group, and the evaluation package stays importable (and quick)
without torch.
"""

from __future__ import annotations

import sys
from typing import Any, List, Optional, Tuple


def _process_group():
    """``torch.distributed`` when a process group is initialised, else None."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist
    return None


def get_world_size() -> int:
    dist = _process_group()
    return dist.get_world_size() if dist is not None else 1


def get_rank() -> int:
    dist = _process_group()
    return dist.get_rank() if dist is not None else 0


def is_main_process() -> bool:
    return get_rank() == 0


def rank_and_world_size(
    rank: Optional[int] = None, world_size: Optional[int] = None
) -> Tuple[int, int]:
    """(rank, world_size): the given values, else the process group's, else (0, 1)."""
    rank = get_rank() if rank is None else int(rank)
    world_size = get_world_size() if world_size is None else int(world_size)
    if not 0 <= rank < world_size:
        raise ValueError(
            f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}"
        )
    return rank, world_size


def all_gather_objects(obj: Any) -> List[Any]:
    """Every process's ``obj`` in rank order (a one-element list without distributed)."""
    dist = _process_group()
    if dist is None or dist.get_world_size() == 1:
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_to_main(items: List[Any]) -> Optional[List[Any]]:
    """Every process's ``items`` concatenated in rank order on rank 0; None on the other ranks.

    Every rank must call it (it is an all-gather). Without distributed, returns ``items``.
    """
    if get_world_size() == 1:
        return items
    parts = all_gather_objects(items)
    return [x for part in parts for x in part] if is_main_process() else None


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every process."""
    dist = _process_group()
    if dist is None or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
