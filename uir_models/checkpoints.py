"""Atomic checkpoint files shared by every trainer (proxy restorer, prompts, training loop).

A crash leaves the old file or the new one, whole; a file that cannot be used is reported by
name and never discarded silently.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Set
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used; it is never discarded silently."""


def write_atomic(state: dict[str, Any], path: Path) -> None:
    """Write to a temp file beside ``path``, fsync, rename."""
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


def read_checkpoint(
    path: Path,
    what: str,
    *,
    kind: str | None = None,
    format_version: int | None = None,
    keys: Set[str] = frozenset(),
    error: type[CheckpointError] = CheckpointError,
) -> dict[str, Any]:
    """Load (``weights_only``: no code runs from the file) and check ``kind``/format/keys when
    given; every failure names the file, so a user knows what to delete."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise error(
            f"cannot read {what} {path} (unreadable: {exc}); delete it to start over"
        ) from exc
    if not isinstance(state, dict) or not set(keys).issubset(state):
        raise error(f"{path} is not a {what}")
    if kind is not None and (state.get("kind") != kind or state.get("format") != format_version):
        raise error(
            f"{path} is a {state.get('kind')!r} checkpoint of format {state.get('format')}; "
            f"this code reads {kind!r} format {format_version}"
        )
    return state
