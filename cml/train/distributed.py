"""Seeds and processes: one random stream per purpose, the torchrun process group, and mixed precision.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from cml.model.devices import Process

log = logging.getLogger(__name__)

# independent random streams derived from the seed
TRAIN_STREAM, VAL_STREAM, NORM_STREAM, KMEANS_STREAM = range(4)
# Seeds, devices, processes


def derive_seed(*keys: int) -> int:
    """A 63-bit seed for one random stream, the same on every platform (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> 1)


def generator(*keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*keys))


@dataclass
class Dist:
    """Where this process stands in a (possibly one-process) run."""

    rank: int = 0
    world: int = 1
    owns_group: bool = False  # this call created the process group and must destroy it

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> Dist:
    """Join the torchrun process group (gloo on CPU, nccl on CUDA) when WORLD_SIZE > 1."""
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size())
    if Process.from_env().world <= 1:
        return Dist()
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), owns_group=True)


def autocast_context(device: torch.device, precision: str) -> tuple[contextlib.AbstractContextManager, Optional[torch.dtype]]:
    """Autocast context and its dtype: mixed precision only on CUDA (CPU autocast is slower than fp32)."""
    if precision == "auto":
        if device.type != "cuda":
            return contextlib.nullcontext(), None
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp32":
        return contextlib.nullcontext(), None
    if device.type != "cuda":
        raise ValueError(f"precision {precision!r} needs a CUDA device; use 'auto' or 'fp32' on {device}")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast("cuda", dtype=dtype), dtype


def gather(x: Tensor, d: Dist) -> Tensor:
    """Concatenate x over processes in rank order; gradients flow only into this process's slice."""
    if d.world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(d.world)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[d.rank] = x
    return torch.cat(parts)


def all_mean(value: float, d: Dist, device: torch.device) -> float:
    if d.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / d.world
