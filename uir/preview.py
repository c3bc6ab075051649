"""Contact sheets that show a degradation before anyone builds a dataset with it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import degradations
from degradations.describe import describe
from uir.contact_sheet import Tile, make_contact_sheet
from uir.demo import demo_images
from uir.imageio import load_rgb, read_depth, sidecar

STRENGTHS = (0.0, 0.5, 1.0)  # positions in a type's default range for --all


@dataclass
class DemoPhoto:
    path: Path
    image: np.ndarray
    inputs: dict[str, np.ndarray]


def load_demo_photos() -> list[DemoPhoto]:
    photos = []
    for path in demo_images():
        depth = sidecar(path, ".depth.png")
        inputs = {"depth": read_depth(depth)} if depth else {}
        photos.append(DemoPhoto(path, load_rgb(path), inputs))
    return photos


def degrade_photos(
    photos: list[DemoPhoto], pipeline: str, seed: int
) -> Iterator[tuple[DemoPhoto, degradations.Sample]]:
    """One sample per photo; seeds from (seed, "<photo>-<pipeline>") so rows are independent."""
    for photo in photos:
        key = f"{photo.path.stem}-{Path(pipeline).stem}"
        yield photo, degradations.synthesize_sample(
            photo.image, pipeline, degradations.derive_seed(seed, key), inputs=photo.inputs
        )


def sample_tiles(pipeline: str, sample: degradations.Sample) -> list[Tile]:
    tiles = [Tile(sample.lq, f"{pipeline}: {sample.record['prompt']}\n{describe(sample.record)}")]
    if "mask" in sample.extras:
        tiles.append(Tile(sample.extras["mask"], "mask"))
    return tiles


def pipeline_sheet(pipeline: str, seed: int) -> np.ndarray:
    rows = []
    for photo, sample in degrade_photos(load_demo_photos(), pipeline, seed):
        hq = Tile(photo.image, f"{photo.path.stem} (HQ)")
        rows.append([hq, *sample_tiles(pipeline, sample)])
    return make_contact_sheet(rows, title=f"{pipeline}, seed {seed}: HQ | LQ (| mask)")


def _ladder_prompt(kind: degradations.registry.DegradationType, position: float) -> str:
    """The type's parameter clause with its first parameter at a position in its range."""
    values = {}
    for index, param in enumerate(kind.params):
        where = position if index == 0 else 0.5
        values[param.name] = param.round(param.low + where * (param.high - param.low))
    return kind.render(values)


def types_sheet(seed: int) -> np.ndarray:
    """One row per registered type: HQ, then the type at low, middle and high strength."""
    photos = load_demo_photos()
    kinds = sorted(degradations.DEGRADATIONS.values(), key=lambda k: k.order)
    rows = []
    for index, kind in enumerate(kinds):
        photo = photos[index % len(photos)]
        row = [Tile(photo.image, f"{kind.name} ({photo.path.stem})")]
        for position in STRENGTHS:
            prompt = _ladder_prompt(kind, position)
            sample = degradations.synthesize_sample(
                photo.image, "prompt", degradations.derive_seed(seed, f"{kind.name}-{position}"),
                inputs=photo.inputs, prompt=prompt,
            )
            row.append(Tile(sample.lq, prompt))
            if "mask" in sample.extras and position == STRENGTHS[-1]:
                row.append(Tile(sample.extras["mask"], "mask"))
        rows.append(row)
    title = f"Degradation types at low / mid / high strength (seed {seed})"
    return make_contact_sheet(rows, title=title)
