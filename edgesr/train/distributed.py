"""Distributed data parallel under ``torchrun``: NCCL on GPUs, gloo on CPU; rank 0 writes.

Launch (one node, 4 GPUs)::

    torchrun --nproc_per_node=4 -m edgesr train model=rdn data.batch_size=64 out=runs/rdn

Several nodes: add ``--nnodes=N --node_rank=I --rdzv_endpoint=HOST:PORT`` (torchrun's own options).
``data.batch_size`` is the *global* batch; each rank builds its shard of the same global batch (see
:mod:`edgesr.train.data`), so N ranks give the result of one process with the whole batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from edgesr.device import pick_device


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(preference: str = "auto") -> DistEnv:
    """Joins the process group when launched by torchrun (WORLD_SIZE > 1); a plain run is rank 0 of 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(preference)
    if world_size == 1:
        return DistEnv(0, 1, device)
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistEnv(dist.get_rank(), dist.get_world_size(), device)


def barrier(env: DistEnv) -> None:
    if env.world_size > 1:
        dist.barrier()


def broadcast_flag(env: DistEnv, flag: bool) -> bool:
    """Rank 0's flag on every rank (e.g. 'stop now'), so all ranks leave the loop at the same step."""
    if env.world_size == 1:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=env.device)
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())


def shutdown(env: DistEnv) -> None:
    if env.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()
