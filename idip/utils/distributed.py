"""Process-group helpers that also work without torch.distributed (one process)."""

from __future__ import annotations

import datetime
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


def init_distributed(device_type: str) -> bool:
    """Joins the process group described by torchrun's environment (RANK, WORLD_SIZE, ...).

    Without those variables (a plain ``python train.py``) nothing happens and the run is one
    process. The backend is NCCL for CUDA and Gloo otherwise; on CUDA each process is pinned to
    the GPU of its LOCAL_RANK.

    Args:
        device_type: "cuda" or "cpu" (the type of ``MODEL.DEVICE``).

    Returns:
        True when this process is part of a (possibly one-member) process group.
    """
    if is_dist():
        return True
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    if not dist.is_available():
        raise RuntimeError("torch was built without torch.distributed; run with plain `python`")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {local_rank} has no GPU: only {torch.cuda.device_count()} visible "
                "(lower --nproc_per_node)"
            )
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    kwargs: dict[str, Any] = {"backend": backend}
    if device_type == "cuda":
        kwargs["device_id"] = torch.device("cuda", local_rank)
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if restart > 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # Restarted workers reuse torchrun's store, which still holds the keys (peer addresses)
        # of the failed attempt; a per-attempt prefix keeps the new group from reading them.
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            is_master=False,
            timeout=datetime.timedelta(minutes=30),
        )
        kwargs.update(
            store=dist.PrefixStore(f"idip/attempt_{restart}", store),
            rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
        )
    else:
        kwargs["init_method"] = "env://"
    dist.init_process_group(**kwargs)
    return True


def destroy_distributed() -> None:
    """Leaves the process group (no-op when none was joined)."""
    if is_dist():
        dist.destroy_process_group()


def shared_random_seed() -> int:
    """A random seed drawn on rank 0 and sent to every rank (the same value everywhere)."""
    seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    return int(broadcast_object(seed, src=0))
