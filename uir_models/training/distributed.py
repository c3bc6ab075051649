"""Process-group setup for torchrun and the few collectives the training loop needs.

One code path for one process and for many: every helper is a no-op (or the identity) when no
process group is running, so the loop never branches on ``world_size`` except to wrap DDP.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from uir_models.devices import resolve_device


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank, the world, and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files (checkpoint, logs, metrics); the others only compute."""
        return self.rank == 0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed(device: str = "auto") -> DistContext:
    """Join torchrun's process group when its environment says ``WORLD_SIZE > 1``.

    NCCL on CUDA, gloo on CPU (the backend follows the device, so a CPU test of the same code
    needs no GPU). Idempotent: a group that is already up (for example one a launcher made) is
    used as is. Each CUDA rank computes on ``cuda:LOCAL_RANK``, as torchrun intends.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    resolved = resolve_device(device)
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    if not is_distributed() and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
    if is_distributed():
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, resolved)
    return DistContext(0, 1, 0, resolved)


def shutdown_distributed() -> None:
    """Leave the process group (end of a torchrun script); a no-op in one process."""
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over ranks, in place and returned: what DDP does to gradients, for logged losses."""
    if is_distributed():
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor


def reduce_weighted_means(sums: Mapping[str, float], count: int) -> dict[str, float]:
    """Global means from every rank's sums and sample counts.

    Evaluation shares differ by a sample between ranks (and may be empty), so means are
    weighted by counts, and the sums travel as objects: a rank without batches has no keys.
    """
    totals: dict[str, float] = {}
    samples = 0
    for rank_sums, rank_count in all_gather_objects((dict(sums), count)):
        samples += rank_count
        for name, value in rank_sums.items():
            totals[name] = totals.get(name, 0.0) + value
    return {name: value / samples for name, value in sorted(totals.items())} if samples else {}


def all_gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value``, indexed by rank (a one-item list in one process)."""
    if not is_distributed():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered
