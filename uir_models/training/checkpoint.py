"""Atomic training checkpoints and the RNG states that make a resumed run bit-exact."""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_FORMAT = 1
"""Bumped when the layout changes; other formats are refused, not guessed at."""
CHECKPOINT_KIND = "uir-train"
_KEYS = frozenset(
    {"format", "kind", "digest", "model", "ema", "optimizer", "scheduler"}
    | {"step", "epoch", "consumed", "rng"}
)


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used; it is never discarded silently."""


def write_atomic(state: dict[str, Any], path: Path) -> None:
    """Write to a temp file beside ``path``, fsync, rename: a crash leaves old or new, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load (``weights_only``: no code runs from the file) and check a checkpoint; every
    failure names the file, so a user knows what to delete."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot read training checkpoint {path}: {exc}; delete it to start over"
        ) from exc
    if not isinstance(state, dict) or not _KEYS.issubset(state):
        raise CheckpointError(f"{path} is not a training checkpoint of this loop")
    if state["kind"] != CHECKPOINT_KIND or state["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is a {state['kind']!r} checkpoint of format {state['format']}; "
            f"this code reads {CHECKPOINT_KIND!r} format {CHECKPOINT_FORMAT}"
        )
    return state


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
