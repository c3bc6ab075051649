"""Write one chunk of the plan into shards; the unit of parallel work and of resume.

A chunk's ``_stats.json`` is written last and names the plan digest it was made from, so a
chunk with a matching stats file is finished and is never redone, and anything else of that
chunk (a killed write, a stale part) is removed and rewritten.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from uir.dataset import schema
from uir.dataset.atomic import remove_temporaries, write_json_atomic
from uir.dataset.plan import Chunk
from uir.dataset.samples import SampleMaker, tally
from uir.dataset.tarwriter import ShardFile, TarShardWriter


@dataclass(frozen=True)
class ChunkResult:
    split: str
    index: int
    digest: str
    shards: tuple[ShardFile, ...]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    reused: bool = False

    @property
    def samples(self) -> int:
        return sum(shard.samples for shard in self.shards)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("reused")
        data["samples"] = self.samples
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], reused: bool = False) -> ChunkResult:
        return cls(
            data["split"], data["index"], data["digest"],
            tuple(ShardFile(**shard) for shard in data["shards"]), data["counts"], reused,
        )


def finished(chunk: Chunk, folder: Path) -> ChunkResult | None:
    """The chunk's result if a previous run completed it from the same plan."""
    path = folder / schema.stats_name(chunk.split, chunk.index)
    try:
        result = ChunkResult.from_json(json.loads(path.read_text()), reused=True)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if result.digest != chunk.digest:
        return None
    for shard in result.shards:
        target = folder / shard.name
        if not target.is_file() or target.stat().st_size != shard.bytes:
            return None
    return result


def _clear(chunk: Chunk, folder: Path) -> None:
    """Remove leftovers of this chunk: stats first, so it can never look finished."""
    stem = schema.chunk_name(chunk.split, chunk.index)
    (folder / schema.stats_name(chunk.split, chunk.index)).unlink(missing_ok=True)
    for path in folder.glob(f"{stem}-*.tar"):
        path.unlink()
    remove_temporaries(folder, stem)


def write_chunk(chunk: Chunk, folder: Path) -> ChunkResult:
    """Make every sample of the chunk, rolling over to a new part at the size cap."""
    done = finished(chunk, folder)
    if done is not None:
        return done
    _clear(chunk, folder)
    maker = SampleMaker(chunk.settings)
    counts: dict[str, Counter[str]] = {name: Counter() for name in ("labels", "kinds", "recipes")}
    shards: list[ShardFile] = []
    writer: TarShardWriter | None = None
    try:
        for spec in chunk.samples:
            members, metadata = maker.make(spec)
            if writer is not None and writer.projected_size(members) > chunk.settings.max_bytes:
                shards.append(writer.close())
                writer = None
            if writer is None:
                name = schema.shard_name(chunk.split, chunk.index, len(shards))
                writer = TarShardWriter(folder / name, md5=chunk.settings.md5)
            writer.write(spec.key, members)
            tally(metadata, counts)
        if writer is not None:
            shards.append(writer.close())
            writer = None
    finally:
        if writer is not None:
            writer.abort()
    result = ChunkResult(
        chunk.split, chunk.index, chunk.digest, tuple(shards),
        {name: dict(sorted(counter.items())) for name, counter in counts.items()},
    )
    write_json_atomic(folder / schema.stats_name(chunk.split, chunk.index), result.to_json())
    return result
