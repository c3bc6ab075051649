"""Dataset-level files written after the last chunk: manifest, sizes, wids index, card, rejects.

Everything here is derived from the chunk stats, so finalising again (after a resume, or to
repair a deleted manifest) gives the same bytes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from uir.dataset import schema
from uir.dataset.atomic import remove_temporaries, write_json_atomic, write_text_atomic
from uir.dataset.chunks import ChunkResult
from uir.dataset.config import SPLITS, DatasetConfig
from uir.dataset.plan import Chunk
from uir.dataset.provenance import git_commit, library_versions
from uir.dataset.rejects import Rejection, write_rejects
from uir.dataset.tarwriter import ShardFile

MANIFEST_FORMAT = "uir-forge-manifest/1"


def _check_complete(chunks: Sequence[Chunk], results: Sequence[ChunkResult]) -> list[ChunkResult]:
    by_id = {(r.split, r.index): r for r in results}
    ordered = []
    for chunk in chunks:
        result = by_id.get((chunk.split, chunk.index))
        if result is None or result.digest != chunk.digest:
            raise RuntimeError(f"chunk {chunk.split}-{chunk.index:05d} is missing or stale")
        if result.samples != len(chunk.samples):
            raise RuntimeError(
                f"chunk {chunk.split}-{chunk.index:05d} holds {result.samples} samples, "
                f"planned {len(chunk.samples)}"
            )
        ordered.append(result)
    return ordered


def _remove_stale(folder: Path, keep: set[str]) -> list[str]:
    """Shards and stats of an earlier plan that this plan no longer has."""
    removed = []
    for path in sorted(folder.iterdir()):
        ours = schema.SHARD_PATTERN.match(path.name) or schema.STATS_PATTERN.match(path.name)
        if ours and path.name not in keep:
            path.unlink()
            removed.append(path.name)
    return removed


def _sum(results: Sequence[ChunkResult], field: str) -> dict[str, int]:
    total: Counter[str] = Counter()
    for result in results:
        total.update(result.counts.get(field, {}))
    return dict(sorted(total.items()))


def build_manifest(
    config: DatasetConfig,
    results: Sequence[ChunkResult],
    rejects: Sequence[Rejection],
    seen: int,
    accepted: int,
) -> dict[str, Any]:
    shards = [
        {"split": r.split, **vars(s)}
        for r in results
        for s in r.shards
    ]
    by_split = {
        split: [r for r in results if r.split == split] for split in SPLITS
    }
    return {
        "format": MANIFEST_FORMAT,
        "schema": schema.SCHEMA_VERSION,
        "dataset": config.name,
        "version": config.version,
        "seed": config.seed,
        "params_hash": config.params_hash(),
        "code": {"git_commit": git_commit(), **library_versions()},
        "counts": {
            "seen": seen,
            "accepted": accepted,
            "rejected": len(rejects),
            "rejected_by_stage": dict(sorted(Counter(r.stage for r in rejects).items())),
            "samples": sum(r.samples for r in results),
            "splits": {split: sum(r.samples for r in group) for split, group in by_split.items()},
            "labels": {split: _sum(group, "labels") for split, group in by_split.items()},
            "kinds": _sum(results, "kinds"),
            "recipes": _sum(results, "recipes"),
        },
        "shards": shards,
    }


def wids_index(name: str, shards: Sequence[ShardFile]) -> dict[str, Any]:
    return {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": name,
        "shardlist": [
            {"url": s.name, "nsamples": s.samples, "filesize": s.bytes}
            | ({"md5sum": s.md5} if s.md5 else {})
            for s in shards
        ],
    }


def write_indexes(folder: Path, name: str, shards: Sequence[tuple[str, ShardFile]]) -> None:
    """sizes.json and one wids index per split, for the (split, shard) list given."""
    write_json_atomic(folder / schema.SIZES, {s.name: s.samples for _, s in shards})
    for split in SPLITS:
        index_path = folder / schema.WIDS_INDEX.format(split=split)
        in_split = [s for shard_split, s in shards if shard_split == split]
        if in_split:
            write_json_atomic(index_path, wids_index(f"{name}-{split}", in_split))
        else:
            index_path.unlink(missing_ok=True)


def finalize(
    config: DatasetConfig,
    chunks: Sequence[Chunk],
    results: Sequence[ChunkResult],
    rejects: Sequence[Rejection],
    seen: int,
    accepted: int,
) -> dict[str, Any]:
    """Check every planned chunk is complete, then write the dataset files, manifest last."""
    folder = config.output_dir
    ordered = _check_complete(chunks, results)
    remove_temporaries(folder)  # every chunk is done: any temporary left is from a killed run
    keep = {s.name for r in ordered for s in r.shards}
    keep |= {schema.stats_name(r.split, r.index) for r in ordered}
    _remove_stale(folder, keep)
    write_rejects(folder / schema.REJECTS, rejects)
    write_indexes(folder, config.name, [(r.split, s) for r in ordered for s in r.shards])
    manifest = build_manifest(config, ordered, rejects, seen, accepted)
    write_text_atomic(folder / schema.CARD, dataset_card(manifest))
    write_json_atomic(folder / schema.MANIFEST, manifest)  # last: the dataset is complete
    return manifest


def dataset_card(manifest: dict[str, Any]) -> str:
    """A README for the shard folder: what is in it and how to load it."""
    counts = manifest["counts"]
    labels = sorted({label for split in counts["labels"].values() for label in split})
    rows = [
        f"| {label} | "
        + " | ".join(str(counts["labels"][split].get(label, 0)) for split in SPLITS)
        + " |"
        for label in labels
    ]
    splits = " | ".join(str(counts["splits"][split]) for split in SPLITS)
    first_split = next((s for s in SPLITS if counts["splits"][s]), "train")
    return f"""# {manifest["dataset"]} {manifest["version"]}

Paired image-restoration data built by UIR Forge ({manifest["schema"]}).
Params hash `{manifest["params_hash"][:16]}`, code `{manifest["code"]["git_commit"]}`.

| | train | val | test |
|---|---|---|---|
| samples | {splits} |
{chr(10).join(rows)}

Seen {counts["seen"]} inputs: {counts["accepted"]} accepted, {counts["rejected"]} rejected
(reasons in `{schema.REJECTS}`). Shards, checksums and counts: `{schema.MANIFEST}`;
per-shard sample counts: `{schema.SIZES}`; indexed access: `<split>.wids.json`.

Each sample: `{schema.HQ}` (clean), `{schema.LQ}` (degraded), `{schema.CAPTION}` (BLIP caption of
the clean image), `{schema.METADATA}` (labels, prompt, degradation record, provenance) and
`{schema.MASK}` for inpainting samples.

```python
import json, webdataset as wds
shards = [s["name"] for s in json.load(open("{schema.MANIFEST}"))["shards"]
          if s["split"] == "{first_split}"]
dataset = wds.WebDataset(shards, shardshuffle=False).decode("rgb8").to_tuple(
    "{schema.LQ}", "{schema.HQ}", "{schema.CAPTION}", "{schema.METADATA}")
```

Check integrity with `uir verify .`; export for DA-CLIP with `uir export daclip-csv . OUT`.
"""
