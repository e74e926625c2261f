"""Which device and which process: the one reader of torchrun's RANK, WORLD_SIZE and LOCAL_RANK, for
training (`cml.train.distributed`) and embedding (`cml.embed.library.Shard`) alike."""
from __future__ import annotations

import os
from typing import NamedTuple

import torch

from cml.errors import UsageError


class Process(NamedTuple):
    """This process in a `torchrun` job (rank 0 of 1 outside one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Process":
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))


def resolve_device(name: str) -> torch.device:
    """`auto` (cuda when available), `cpu`, `cuda`, `cuda:N`, `mps`: a UsageError when it is not here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"device {name!r} is not a device name (auto, cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise UsageError(f"device {name!r}: no such CUDA device here ({torch.cuda.device_count()} found); "
                         "use cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"device {name!r}: MPS is not available here; use cpu")
    return device


def process_device(name: str) -> torch.device:
    """`resolve_device` with one GPU per process: cuda without an index is this process's cuda:LOCAL_RANK."""
    device = resolve_device(name)
    local_rank = Process.from_env().local_rank
    return torch.device("cuda", local_rank) if device.type == "cuda" and device.index is None else device
