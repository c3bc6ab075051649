"""The synthesis plan: every sample the dataset will hold, decided before any pixel is made.

Keys, seeds, recipes and crops depend only on (dataset seed, HQ content), never on file
order or worker count, so a rebuild or a resumed build makes the same samples; chunks are
the unit of work and of resume.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from degradations.engine import sizes_scene_geometry
from degradations.prompt import Clause, RestorationPrompt, render
from degradations.seeding import derive_seed, generator
from uir.dataset.captions import Caption
from uir.dataset.config import SPLITS, DatasetConfig
from uir.dataset.ingest import Item, pair_scale
from uir.dataset.schema import ENCODER_VERSION, SCHEMA_VERSION, check_key
from uir.imageio import DEPTH_SUFFIX, sidecar

KEY_HASH_CHARS = 16


@dataclass(frozen=True)
class SampleSpec:
    """Everything a worker needs to make one sample; small and picklable."""

    key: str
    split: str
    source: str
    hq_path: str
    hq_rel: str
    hq_hash: str
    caption: str
    captioner: str
    seed: int
    crop: tuple[int, int, int, int] | None = None  # top, left, height, width (HQ pixels)
    recipe: str | None = None
    preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    depth_path: str | None = None
    lq_path: str | None = None
    lq_rel: str | None = None
    lq_hash: str | None = None
    label: str | None = None

    @property
    def is_real(self) -> bool:
        return self.lq_path is not None

    def portable(self) -> dict[str, Any]:
        """The spec without absolute paths: what decides the bytes, wherever the repo lives."""
        data = asdict(self)
        for name in ("hq_path", "lq_path", "depth_path"):
            data[name] = data[name] is not None
        return data


@dataclass(frozen=True)
class ShardSettings:
    max_count: int
    max_bytes: int
    png_compression: int
    md5: bool
    max_pixels: int
    dataset: str
    version: str


@dataclass(frozen=True)
class Chunk:
    split: str
    index: int
    samples: tuple[SampleSpec, ...]
    settings: ShardSettings
    digest: str


def _pick(rng: np.random.Generator, weights: Sequence[float]) -> int:
    total = float(sum(weights))
    return int(rng.choice(len(weights), p=[w / total for w in weights]))


def _random_crop(
    key: str, seed: int, size: tuple[int, int], crop: int, scale: int
) -> tuple[int, int, int, int]:
    """A crop box aligned to the LQ grid of a real pair (``scale`` 1 for synthesis)."""
    crop -= crop % scale
    height, width = size
    rng = generator(derive_seed(seed, f"{key}/crop"))
    top = int(rng.integers(0, (height - crop) // scale + 1)) * scale
    left = int(rng.integers(0, (width - crop) // scale + 1)) * scale
    return top, left, crop, crop


def real_prompt(label: str) -> str:
    """Real pairs carry no parameters: the type-only clause, e.g. "Derain;"."""
    return render(RestorationPrompt((Clause(label),)))


def _item_fields(item: Item, split: str, caption: Caption) -> dict[str, Any]:
    candidate = item.candidate
    depth = sidecar(candidate.path, DEPTH_SUFFIX) if not candidate.is_pair else None
    return {
        "split": split,
        "source": candidate.source,
        "hq_path": str(candidate.path),
        "hq_rel": candidate.rel,
        "hq_hash": item.hq_hash,
        "caption": caption.text,
        "captioner": caption.captioner,
        "depth_path": str(depth) if depth else None,
    }


def plan_samples(
    assigned: Sequence[tuple[Item, str]], captions: Mapping[str, Caption], config: DatasetConfig
) -> list[SampleSpec]:
    """All samples, sorted by key, so the variants of one HQ sit next to each other."""
    synthesis = config.synthesis
    random_crop = synthesis.crop.mode == "random"
    # recipes whose crops learn the photo's size (resolving a preset reads its YAML: once each)
    photo_weather = random_crop and synthesis.crop.weather_size == "photo"
    scene_sized = {
        recipe.label
        for recipe in synthesis.recipes
        if photo_weather and sizes_scene_geometry(recipe.resolved()[0])
    }
    samples: list[SampleSpec] = []
    for item, split in assigned:
        fields = _item_fields(item, split, captions[item.hq_hash])
        prefix = item.hq_hash[:KEY_HASH_CHARS]
        if item.candidate.is_pair:
            key = check_key(f"{prefix}-r{item.lq_hash[:8]}")
            scale = pair_scale(item.hq_size, item.lq_size) or 1
            crop = (
                _random_crop(key, config.seed, item.hq_size, synthesis.crop.size, scale)
                if random_crop else None
            )
            samples.append(
                SampleSpec(
                    key=key, seed=derive_seed(config.seed, key), crop=crop,
                    lq_path=str(item.candidate.lq_path), lq_rel=item.candidate.lq_rel,
                    lq_hash=item.lq_hash, label=item.candidate.label, **fields,
                )
            )
            continue
        for variant in range(synthesis.variants):
            key = check_key(f"{prefix}-{variant:03d}")
            choice = generator(derive_seed(config.seed, f"{key}/recipe"))
            recipe = synthesis.recipes[_pick(choice, [r.weight for r in synthesis.recipes])]
            preset, overrides = recipe.resolved()
            crop = (
                _random_crop(key, config.seed, item.hq_size, synthesis.crop.size, 1)
                if random_crop else None
            )
            if recipe.label in scene_sized:
                overrides = {"scene_side": min(item.hq_size), **overrides}
            samples.append(
                SampleSpec(
                    key=key, seed=derive_seed(config.seed, key), crop=crop, recipe=recipe.label,
                    preset=preset, overrides=overrides, **fields,
                )
            )
    samples.sort(key=lambda s: s.key)
    return samples


def shard_settings(config: DatasetConfig) -> ShardSettings:
    return ShardSettings(
        max_count=config.shards.max_count,
        max_bytes=config.shards.max_bytes,
        png_compression=config.shards.png_compression,
        md5=config.shards.md5,
        max_pixels=config.ingest.max_pixels,
        dataset=config.name,
        version=config.version,
    )


def chunk_digest(samples: Sequence[SampleSpec], settings: ShardSettings, code: str) -> str:
    """Identifies a chunk's bytes: a resumed build reuses a finished chunk only on a match."""
    blob = json.dumps(
        {
            "schema": SCHEMA_VERSION,
            "encoder": ENCODER_VERSION,
            "code": code,
            "settings": asdict(settings),
            "samples": [s.portable() for s in samples],
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def make_chunks(samples: Sequence[SampleSpec], config: DatasetConfig, code: str) -> list[Chunk]:
    """Per split, consecutive runs of ``max_count`` samples in key order."""
    settings = shard_settings(config)
    chunks: list[Chunk] = []
    for split in SPLITS:
        members = [s for s in samples if s.split == split]
        step = settings.max_count
        for index, start in enumerate(range(0, len(members), step)):
            part = tuple(members[start : start + step])
            chunks.append(Chunk(split, index, part, settings, chunk_digest(part, settings, code)))
    return chunks
