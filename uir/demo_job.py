"""The main job on the embedded demo photos: degrade them and show the pairs on one sheet.

Seeds derive from (seed, "<photo>-<pipeline>") so a photo's result does not depend on which
other photos or pipelines were run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from uir.contact_sheet import Tile, make_contact_sheet
from uir.imageio import save_image
from uir.preview import degrade_photos, load_demo_photos, sample_tiles

DEFAULT_PIPELINES = ("realesrgan", "tip", "daclip")


def run_demo(out: Path, seed: int = 0, pipelines: Sequence[str] | None = None) -> Path:
    """Write ``<photo>-<pipeline>.png`` + ``.json`` records (+ masks) and ``contact_sheet.png``."""
    pipelines = tuple(pipelines or DEFAULT_PIPELINES)
    out.mkdir(parents=True, exist_ok=True)
    photos = load_demo_photos()
    rows = {
        p.path.stem: [Tile(p.image, f"{p.path.stem} (HQ {p.image.shape[1]}x{p.image.shape[0]})")]
        for p in photos
    }
    for pipeline in pipelines:
        for index, (photo, sample) in enumerate(degrade_photos(photos, pipeline, seed), start=1):
            key = f"{photo.path.stem}-{Path(pipeline).stem}"
            sample.record["source"] = photo.path.name
            save_image(out / f"{key}.png", sample.lq)
            if "mask" in sample.extras:
                save_image(out / f"{key}.mask.png", sample.extras["mask"] * 255)
            (out / f"{key}.json").write_text(json.dumps(sample.record, indent=1) + "\n")
            rows[photo.path.stem] += sample_tiles(pipeline, sample)
            print(f"[{pipeline} {index}/{len(photos)}] {photo.path.name}: "
                  f"{sample.record['prompt']}", flush=True)
    sheet_path = out / "contact_sheet.png"
    title = f"UIR Forge demo: HQ and LQ per pipeline (seed {seed})"
    save_image(sheet_path, make_contact_sheet(list(rows.values()), title=title))
    print(f"wrote {len(photos) * len(pipelines)} LQ images, records and {sheet_path}")
    return sheet_path
