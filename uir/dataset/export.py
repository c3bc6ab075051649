"""Exports to other tools' formats, so their trainers can read our shards unchanged.

DA-CLIP reads a tab-separated CSV of ``filepath`` (the LQ image) and ``title`` =
``"{caption}: {degradation}"`` and splits the title on ": ", so captions are cleaned of that
separator (and of tabs and newlines, which would break the CSV).
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from uir.dataset import schema
from uir.dataset.atomic import write_bytes_atomic
from uir.dataset.config import SPLITS
from uir.dataset.verify import iter_samples, load_manifest

DACLIP_COLUMNS = ("filepath", "title")
_SEPARATOR = re.compile(r":\s")


def daclip_caption(caption: str) -> str:
    """One line, no tab, and no ": " left for DA-CLIP's title split to trip on."""
    flat = " ".join(caption.split())
    return _SEPARATOR.sub(" - ", flat).rstrip(":").strip()


@dataclass
class ExportReport:
    written: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)


def export_daclip_csv(
    folder: Path, out: Path, splits: Iterable[str] = SPLITS, *, with_gt: bool = True
) -> ExportReport:
    """Write ``OUT/<split>/lq/<key>.png`` (+ ``gt/``) and ``OUT/daclip_<split>.csv``.

    Samples with several labels (Real-ESRGAN, TIP, mixed) have no single DA-CLIP degradation
    text and are skipped and counted.
    """
    manifest = load_manifest(folder)
    report = ExportReport()
    for split in splits:
        shards = [e["name"] for e in manifest["shards"] if e["split"] == split]
        if not shards:
            continue
        lq_dir, gt_dir = out / split / "lq", out / split / "gt"
        lq_dir.mkdir(parents=True, exist_ok=True)
        if with_gt:
            gt_dir.mkdir(parents=True, exist_ok=True)
        rows: list[tuple[str, str]] = []
        for shard in shards:
            for key, members in iter_samples(folder / shard):
                labels = _labels(members)
                if len(labels) != 1:
                    report.skipped["multi-label" if labels else "unlabelled"] += 1
                    continue
                lq_path = lq_dir / f"{key}.png"
                write_bytes_atomic(lq_path, members[schema.LQ])
                if with_gt:
                    write_bytes_atomic(gt_dir / f"{key}.png", members[schema.HQ])
                caption = daclip_caption(members[schema.CAPTION].decode())
                rows.append((str(lq_path.resolve()), f"{caption}: {labels[0]}"))
                report.written[split] += 1
        csv_path = out / f"daclip_{split}.csv"
        with open(csv_path, "w", newline="") as file:
            writer = csv.writer(file, delimiter="\t", lineterminator="\n")
            writer.writerow(DACLIP_COLUMNS)
            writer.writerows(rows)
    return report


def _labels(members: dict[str, bytes]) -> list[str]:
    return list(json.loads(members[schema.METADATA]).get("labels") or [])
