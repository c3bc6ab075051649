"""Shard lists of one split, read from a finished dataset's manifest and sizes.json.

Loaders never glob or brace-expand shard names: the manifest is written last by the build, so
its presence means the dataset is complete, and it says which shards belong to which split and
how many samples each holds (the count that fixes the batches per epoch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uir.dataset import schema
from uir.dataset.config import SPLITS
from uir.dataset.verify import load_manifest, verify


class DatasetError(ValueError):
    """A dataset folder that a loader cannot use; the message names the folder and the fix."""


@dataclass(frozen=True)
class SplitShards:
    """The shards of one split, in manifest order, with their sample and label counts."""

    folder: Path
    split: str
    urls: tuple[str, ...]
    sizes: tuple[int, ...]
    sha256: tuple[str, ...]
    """The manifest's hashes: what a training run's resume digest knows the data by."""
    label_counts: dict[str, int]

    @property
    def num_samples(self) -> int:
        return sum(self.sizes)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: missing or unreadable ({err})") from None


def split_shards(folder: str | Path, split: str, *, full_verify: bool = False) -> SplitShards:
    """The shards of ``split`` in ``folder``, checked cheaply against the manifest.

    Every listed shard must exist with the manifest's byte size and ``sizes.json`` must agree
    with the manifest; ``full_verify`` also re-hashes every shard (``uir verify``), which reads
    the whole dataset and is meant for a one-off check before a long run.
    """
    folder = Path(folder)
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such dataset folder (build it with `uir build`)")
    try:
        manifest = load_manifest(folder)
    except (FileNotFoundError, ValueError) as err:
        raise DatasetError(f"{err}; build or resume it with `uir build`") from None
    if manifest.get("schema") != schema.SCHEMA_VERSION:
        raise DatasetError(
            f"{folder}: shard schema {manifest.get('schema')!r}, this loader reads "
            f"{schema.SCHEMA_VERSION!r}"
        )
    if full_verify:
        report = verify(folder)
        if not report.ok:
            shown = "; ".join(report.problems[:5])
            raise DatasetError(
                f"{folder}: verification failed ({len(report.problems)} problems): {shown}"
            )
    sizes = _read_json(folder / schema.SIZES)
    entries = [entry for entry in manifest["shards"] if entry["split"] == split]
    for entry in entries:
        path = folder / entry["name"]
        if not path.is_file() or path.stat().st_size != entry["bytes"]:
            raise DatasetError(
                f"{path}: missing or not the size the manifest records (run `uir verify {folder}`)"
            )
        if sizes.get(entry["name"]) != entry["samples"]:
            raise DatasetError(
                f"{folder / schema.SIZES} disagrees with the manifest on "
                f"{entry['name']} (run `uir verify {folder}`)"
            )
    if sum(entry["samples"] for entry in entries) == 0:
        raise DatasetError(f"{folder}: split {split!r} has no samples")
    return SplitShards(
        folder=folder,
        split=split,
        urls=tuple(str(folder / entry["name"]) for entry in entries if entry["samples"]),
        sizes=tuple(entry["samples"] for entry in entries if entry["samples"]),
        sha256=tuple(entry["sha256"] for entry in entries if entry["samples"]),
        label_counts=dict(manifest["counts"]["labels"].get(split, {})),
    )
