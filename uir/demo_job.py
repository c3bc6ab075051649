"""The main job on the embedded demo photos: degrade them and show the pairs on one sheet.

Seeds derive from (seed, "<photo>-<pipeline>") so a photo's result does not depend on which
other photos or pipelines were run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import degradations
from degradations.describe import describe
from uir.contact_sheet import Tile, make_contact_sheet
from uir.demo import demo_images
from uir.imageio import load_rgb, save_image

DEFAULT_PIPELINES = ("realesrgan", "tip")


def run_demo(out: Path, seed: int = 0, pipelines: Sequence[str] | None = None) -> Path:
    """Write ``<photo>-<pipeline>.png`` + ``.json`` records and ``contact_sheet.png``."""
    pipelines = tuple(pipelines or DEFAULT_PIPELINES)
    for name in pipelines:
        degradations.registry.get_pipeline(name)
    out.mkdir(parents=True, exist_ok=True)
    photos = demo_images()
    rows = []
    for index, photo in enumerate(photos, start=1):
        hq = load_rgb(photo)
        row = [Tile(hq, f"{photo.stem} (HQ {hq.shape[1]}x{hq.shape[0]})")]
        for pipeline in pipelines:
            key = f"{photo.stem}-{pipeline}"
            lq, record = degradations.synthesize(hq, pipeline, degradations.derive_seed(seed, key))
            record["source"] = photo.name
            save_image(out / f"{key}.png", lq)
            (out / f"{key}.json").write_text(json.dumps(record, indent=1) + "\n")
            row.append(Tile(lq, f"{pipeline}: {record['prompt']}\n{describe(record)}"))
        rows.append(row)
        print(f"[{index}/{len(photos)}] {photo.name}", flush=True)
    sheet_path = out / "contact_sheet.png"
    title = f"UIR Forge demo: HQ and LQ per pipeline (seed {seed})"
    save_image(sheet_path, make_contact_sheet(rows, title=title))
    print(f"wrote {len(photos) * len(pipelines)} LQ images, records and {sheet_path}")
    return sheet_path
