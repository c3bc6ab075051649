"""Atomic training checkpoints and the RNG states that make a resumed run bit-exact."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uir_models.checkpoints import CheckpointError, read_checkpoint, write_atomic

__all__ = ["CheckpointError", "read_training_checkpoint", "write_atomic"]

CHECKPOINT_FORMAT = 1
"""Bumped when the layout changes; other formats are refused, not guessed at."""
CHECKPOINT_KIND = "uir-train"
_KEYS = frozenset(
    {"format", "kind", "digest", "model", "ema", "optimizer", "scheduler"}
    | {"step", "epoch", "consumed", "rng"}
)


def read_training_checkpoint(path: Path) -> dict[str, Any]:
    return read_checkpoint(
        path,
        "training checkpoint",
        kind=CHECKPOINT_KIND,
        format_version=CHECKPOINT_FORMAT,
        keys=_KEYS,
    )


def rng_state(device: torch.device) -> dict[str, Any]:
    """torch (CPU and this CUDA device), NumPy's global and Python's ``random`` states, in
    types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_everything(seed: int, rank: int) -> None:
    """A fresh run's RNGs: per rank, so stochastic losses differ across ranks but not runs."""
    torch.manual_seed(seed * 1000 + rank)
    np.random.seed((seed * 1000 + rank) % 2**32)
    random.seed(seed * 1000 + rank)
