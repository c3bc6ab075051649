"""Splits by a stable hash of the HQ pixels, so every variant and every real LQ of one clean
image lands in the same split, whatever order the files were found in."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping

from uir.dataset.config import SPLITS, SplitConfig
from uir.dataset.ingest import Item
from uir.dataset.rejects import Rejection

# When official splits disagree, the evaluation side keeps the image: a test GT in train leaks.
_PRIORITY = {"test": 0, "val": 1, "train": 2}


def hash_split(hq_hash: str, config: SplitConfig) -> str:
    digest = hashlib.sha256(f"{config.salt}\x00{hq_hash}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    if position < config.train:
        return "train"
    if position < config.train + config.val:
        return "val"
    return "test"


def assign_splits(
    items: Iterable[Item], config: SplitConfig
) -> tuple[list[tuple[Item, str]], list[Rejection]]:
    """Each item with its split; pairs from sources with an official split keep it, and a GT
    that would appear in two splits stays only in the one with priority test > val > train."""
    items = list(items)
    wanted = [(item, item.candidate.split or hash_split(item.hq_hash, config)) for item in items]
    home: dict[str, str] = {}
    for item, split in wanted:
        current = home.get(item.hq_hash)
        if current is None or _PRIORITY[split] < _PRIORITY[current]:
            home[item.hq_hash] = split
    kept: list[tuple[Item, str]] = []
    rejects: list[Rejection] = []
    for item, split in wanted:
        if home[item.hq_hash] == split:
            kept.append((item, split))
        else:
            rejects.append(
                Rejection(
                    item.candidate.source, item.candidate.lq_rel or item.candidate.rel, "split",
                    f"leakage: its GT is also in the {home[item.hq_hash]} split",
                )
            )
    return kept, rejects


def find_leaks(hq_splits: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """HQ hashes that occur in more than one split (verify runs this over the shards)."""
    seen: Mapping[str, set[str]] = defaultdict(set)
    for hq_hash, split in hq_splits:
        seen[hq_hash].add(split)
    return {h: sorted(s, key=SPLITS.index) for h, s in seen.items() if len(s) > 1}
