"""Ingest: decode, validate and content-hash every candidate; reject what cannot be used.

Hashes are of the decoded pixels (with the shape), so a PNG and its lossless re-encode are the
same image for de-duplication, splits and the caption cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from uir.dataset.config import IngestConfig
from uir.dataset.rejects import Rejection
from uir.dataset.sources import Candidate
from uir.imageio import ImageDecodeError, load_rgb


@dataclass(frozen=True)
class Item:
    """A validated candidate: what planning needs, without the pixels (builds stream)."""

    candidate: Candidate
    hq_hash: str
    hq_size: tuple[int, int]
    lq_hash: str | None = None
    lq_size: tuple[int, int] | None = None

    @property
    def identity(self) -> str:
        """What de-duplication compares: the HQ, or the (GT, LQ) pair."""
        return self.hq_hash if self.lq_hash is None else f"{self.hq_hash}+{self.lq_hash}"


def pixel_hash(image: np.ndarray) -> str:
    digest = hashlib.sha256(f"{image.shape}".encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


def _size(image: np.ndarray) -> tuple[int, int]:
    return int(image.shape[0]), int(image.shape[1])


def pair_scale(hq_size: tuple[int, int], lq_size: tuple[int, int]) -> int | None:
    """The integer factor from LQ to GT (1 for restoration pairs), or None if they disagree."""
    if lq_size[0] == 0 or hq_size[0] % lq_size[0] or hq_size[1] % lq_size[1]:
        return None
    scale = hq_size[0] // lq_size[0]
    return scale if hq_size[1] // lq_size[1] == scale else None


def _check(candidate: Candidate, config: IngestConfig, min_size: int) -> Item:
    hq = load_rgb(candidate.path, max_pixels=config.max_pixels, name=candidate.rel)
    if min(hq.shape[:2]) < min_size:
        raise ImageDecodeError(
            f"{candidate.rel}: {hq.shape[1]}x{hq.shape[0]} is below the minimum side {min_size}"
        )
    if candidate.lq_path is None:
        return Item(candidate, pixel_hash(hq), _size(hq))
    lq = load_rgb(candidate.lq_path, max_pixels=config.max_pixels, name=candidate.lq_rel)
    if pair_scale(_size(hq), _size(lq)) is None:
        raise ImageDecodeError(
            f"{candidate.lq_rel}: LQ {lq.shape[1]}x{lq.shape[0]} does not match GT "
            f"{hq.shape[1]}x{hq.shape[0]} (equal, or smaller by one integer factor)"
        )
    return Item(candidate, pixel_hash(hq), _size(hq), pixel_hash(lq), _size(lq))


def ingest(
    candidates: Sequence[Candidate], config: IngestConfig, min_size: int
) -> list[Item | Rejection]:
    """Validate candidates in order; one result per candidate. Runs in worker processes."""
    results: list[Item | Rejection] = []
    for candidate in candidates:
        try:
            results.append(_check(candidate, config, min_size))
        except (ImageDecodeError, OSError) as err:
            reason = str(err)
            label = candidate.lq_rel if candidate.lq_rel and candidate.lq_rel in reason else None
            prefix = f"{label or candidate.rel}: "
            results.append(
                Rejection(
                    candidate.source, label or candidate.rel, "ingest",
                    reason.removeprefix(prefix),
                )
            )
    return results


def deduplicate(items: Iterable[Item]) -> tuple[list[Item], list[Rejection]]:
    """Keep the first of each identity in candidate order; later copies are rejected."""
    first: dict[str, Item] = {}
    kept: list[Item] = []
    rejects: list[Rejection] = []
    for item in items:
        original = first.get(item.identity)
        if original is None:
            first[item.identity] = item
            kept.append(item)
            continue
        where = f"{original.candidate.source}:{original.candidate.lq_rel or original.candidate.rel}"
        rejects.append(
            Rejection(
                item.candidate.source, item.candidate.lq_rel or item.candidate.rel,
                "dedupe", f"duplicate of {where}",
            )
        )
    return kept, rejects
