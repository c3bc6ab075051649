"""Random access to the samples of a finished dataset, and their folds.

Training reads samples in random order, so each shard is indexed once (member offsets from
its tar headers) and members are read with ``pread``: no shard is unpacked, nothing is held in
memory but the index.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import imagecodecs
import numpy as np

from uir.dataset import schema
from uir.dataset.verify import iter_samples, load_manifest


@dataclass(frozen=True)
class SampleRef:
    """One sample of the base dataset, as the quality steps need to see it."""

    shard: str
    split: str
    key: str
    fold: int
    labels: tuple[str, ...]


def fold_of(hq_sha256: str, salt: str) -> int:
    """Stable 2-fold assignment of an HQ image (all of its LQ variants share the fold)."""
    digest = hashlib.sha256(f"{salt}:{hq_sha256}".encode()).digest()
    return digest[0] & 1


def decode_png(data: bytes) -> np.ndarray:
    """Shard PNGs are 8-bit RGB or grey (masks); returned as HxWx3 / HxW uint8."""
    image = imagecodecs.png_decode(data)
    if image.dtype != np.uint8:
        raise ValueError(f"expected an 8-bit PNG, got {image.dtype}")
    return image


def to_size(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bring an LQ to its HQ's (width, height): SR pairs are restored at the HQ size."""
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image
    return cv2.resize(image, tuple(size), interpolation=cv2.INTER_CUBIC)


class TarMembers:
    """Member offsets of one tar, read once from its headers; members then come by pread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.index: dict[str, dict[str, tuple[int, int]]] = {}
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                key, _, member = info.name.partition(".")
                self.index.setdefault(key, {})[member] = (info.offset_data, info.size)

    def read(self, key: str, members: Sequence[str]) -> dict[str, bytes]:
        where = self.index[key]
        fd = os.open(self.path, os.O_RDONLY)
        try:
            return {member: os.pread(fd, where[member][1], where[member][0]) for member in members}
        finally:
            os.close(fd)


class DatasetReader:
    """Members of a finished dataset by (shard, key); the manifest lists the shards."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.manifest = load_manifest(folder)
        self.shards = [entry["name"] for entry in self.manifest["shards"]]
        self._tars: dict[str, TarMembers] = {}

    @property
    def digest(self) -> str:
        """What the dataset's content is: its shard names and checksums (not its git commit)."""
        listed = [(entry["name"], entry["sha256"]) for entry in self.manifest["shards"]]
        return hashlib.sha256(json.dumps(listed).encode()).hexdigest()

    def shard_sha256(self, shard: str) -> str:
        return next(e["sha256"] for e in self.manifest["shards"] if e["name"] == shard)

    def tar(self, shard: str) -> TarMembers:
        if shard not in self._tars:
            self._tars[shard] = TarMembers(self.folder / shard)
        return self._tars[shard]

    def read(self, shard: str, key: str, members: Sequence[str]) -> dict[str, bytes]:
        return self.tar(shard).read(key, members)

    def iter_shard(self, shard: str) -> Iterator[tuple[str, dict[str, bytes]]]:
        yield from iter_samples(self.folder / shard)

    def metadata(self, shard: str, key: str) -> dict[str, Any]:
        return json.loads(self.read(shard, key, [schema.METADATA])[schema.METADATA])

    def pair(self, shard: str, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(LQ at the HQ size, HQ) as uint8 RGB."""
        data = self.read(shard, key, [schema.LQ, schema.HQ])
        hq = decode_png(data[schema.HQ])
        lq = to_size(decode_png(data[schema.LQ]), (hq.shape[1], hq.shape[0]))
        return lq, hq

    def refs(self, salt: str) -> list[SampleRef]:
        """Every sample with its fold, in manifest order; reads only the JSON members."""
        refs = []
        for shard, entry in zip(self.shards, self.manifest["shards"], strict=True):
            for key in self.tar(shard).index:
                meta = self.metadata(shard, key)
                refs.append(
                    SampleRef(
                        shard,
                        entry["split"],
                        key,
                        fold_of(meta["hq_sha256"], salt),
                        tuple(meta["labels"]),
                    )
                )
        return refs
