"""Data-parallel training over several processes, launched by torchrun (gloo on CPU, NCCL on CUDA).

    torchrun --nproc_per_node=2 stages/train.py RUN --config ... --data ...

Every rank draws the same global batch (same seed, same BatchLoader) and trains on its rows
rank, rank + world, ...; DistributedDataParallel averages the gradients, so every optimizer sees
the same gradient and takes the same step. Our optimizers are deterministic given that gradient
(the flip optimizer's masks depend only on its seed, the tensor and the step), so the ranks stay
identical without any extra broadcast. BatchNorm uses each rank's own slice (DDP broadcasts rank 0's
running statistics); the logged train loss and accuracy are rank 0's slice. Only rank 0 writes files.
A single process (no WORLD_SIZE, or 1) runs exactly the plain code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of a global batch."""
        if self.world == 1:
            return x, y
        return x[self.rank::self.world], y[self.rank::self.world]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def init_from_env(device: torch.device) -> tuple[Ranks, torch.device]:
    """Join the process group torchrun describes in the environment (if any); on CUDA each rank
    takes the GPU of its LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size()), device


def wrap(model: nn.Module, ranks: Ranks, device: torch.device) -> nn.Module:
    """The module the training steps call: DDP around `model` on several ranks, else `model` itself."""
    if ranks.world == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
