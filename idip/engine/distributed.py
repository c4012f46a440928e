"""Process-group helpers that also work without torch.distributed (one process)."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if is_dist() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    """Barrier over all ranks (no-op in a single process)."""
    if is_dist() and get_world_size() > 1:
        dist.barrier()


def all_gather(obj: Any) -> list[Any]:
    """Gathers a picklable object from every rank; returns the list on every rank."""
    if get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Returns rank ``src``'s ``obj`` on every rank."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def reduce_dict(values: dict[str, torch.Tensor], average: bool = True) -> dict[str, torch.Tensor]:
    """All-reduces a dict of scalar tensors (sorted keys, so every rank agrees on the order)."""
    if get_world_size() == 1:
        return values
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float() for k in keys])
    dist.all_reduce(stacked)
    if average:
        stacked /= get_world_size()
    return dict(zip(keys, stacked))
