"""Shard schema: the one place that names sample members and dataset files.

Readers (verify, export, the trainers' loaders) import these names instead of spelling them.
"""

from __future__ import annotations

import re

SCHEMA_VERSION = "uir-forge-shards/1"
# Bumped whenever the bytes our encoders write change, so resumed builds never mix encodings.
ENCODER_VERSION = "uir-png/1"

HQ = "hq.png"
LQ = "lq.png"
CAPTION = "txt"
METADATA = "json"
MASK = "mask.png"
MQ = "mq.png"  # the proxy-restored "medium" image (quality labelling)
REQUIRED_MEMBERS = (HQ, LQ, CAPTION, METADATA)
OPTIONAL_MEMBERS = (MASK, MQ)

MANIFEST = "manifest.json"
SIZES = "sizes.json"
REJECTS = "rejects.jsonl"
CARD = "README.md"
DROPPED = "dropped.jsonl"  # samples that curation removed, with the rule and the values
WIDS_INDEX = "{split}.wids.json"
STATS_SUFFIX = "_stats.json"
TEMP_PREFIX = "."

SHARD_NAME = "{split}-{chunk:05d}-{part:02d}.tar"
CHUNK_NAME = "{split}-{chunk:05d}"
SHARD_PATTERN = re.compile(r"^(train|val|test)-(\d{5})-(\d{2})\.tar$")
STATS_PATTERN = re.compile(r"^(train|val|test)-(\d{5})_stats\.json$")
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")


def shard_name(split: str, chunk: int, part: int) -> str:
    return SHARD_NAME.format(split=split, chunk=chunk, part=part)


def chunk_name(split: str, chunk: int) -> str:
    return CHUNK_NAME.format(split=split, chunk=chunk)


def stats_name(split: str, chunk: int) -> str:
    return chunk_name(split, chunk) + STATS_SUFFIX


def check_key(key: str) -> str:
    """WebDataset splits member names at the first dot, so keys must not contain one."""
    if not KEY_PATTERN.match(key):
        raise ValueError(f"sample key {key!r} must be letters, digits, '-' or '_' (no dots)")
    return key
