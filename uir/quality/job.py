"""Where a dataset's quality labelling reads and writes, and the digests that decide reruns.

Each step records the digest of its inputs next to its outputs (a "stamp"); a step whose stamp
matches is skipped, and one whose inputs changed starts over. DVC makes the same decision from
the stage's deps and params, so `dvc repro` and a flow run agree on what to redo.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from uir.dataset.atomic import write_json_atomic, write_text_atomic
from uir.dataset.config import PARAMS_FILE, DatasetConfig, load_dataset_config
from uir.dataset.provenance import library_versions
from uir.quality.config import QualityConfig, load_quality_config


class QualityError(RuntimeError):
    """The labelling cannot proceed (missing base dataset, an empty fold, ...): one line."""


@dataclass(frozen=True)
class QualityJob:
    dataset: DatasetConfig
    quality: QualityConfig

    @property
    def base_dir(self) -> Path:
        return self.dataset.output_dir

    @property
    def output_dir(self) -> Path:
        return self.quality.resolve_path(self.quality.output)

    @property
    def mq_dir(self) -> Path:
        return self.quality.resolve_path(self.quality.work) / "mq"

    @property
    def score_dir(self) -> Path:
        return self.quality.resolve_path(self.quality.work) / "scores"

    @property
    def proxy_dir(self) -> Path:
        return self.quality.resolve_path(self.quality.models) / "proxy"

    @property
    def perceiver_dir(self) -> Path:
        return self.quality.resolve_path(self.quality.models) / "perceiver"

    @property
    def report_dir(self) -> Path:
        return self.quality.resolve_path(self.quality.reports)

    def proxy_checkpoint(self, fold: int) -> Path:
        return self.proxy_dir / f"fold-{fold}.pt"

    def proxy_stamp(self, fold: int) -> Path:
        return self.proxy_dir / f"fold-{fold}.json"


def split_overrides(overrides: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``--set`` keys under ``quality.`` go to the quality entry, the rest to the dataset."""
    dataset, quality = {}, {}
    for key, value in (overrides or {}).items():
        if key.startswith("quality."):
            quality[key.removeprefix("quality.")] = value
        else:
            dataset[key] = value
    return dataset, quality


def dvc_stage(job: QualityJob, step: str) -> str | None:
    """DVC stage names follow the base stage: ``build_demo`` -> ``proxy_demo`` etc."""
    return f"{step}_{job.dataset.name}" if job.dataset.dvc_stage else None


def load_job(
    name: str,
    params: str | Path = PARAMS_FILE,
    dataset_overrides: dict[str, Any] | None = None,
    quality_overrides: dict[str, Any] | None = None,
) -> QualityJob | None:
    """The dataset's quality job, or None when params.yaml configures no labelling for it."""
    quality = load_quality_config(name, params, quality_overrides)
    if quality is None:
        return None
    return QualityJob(load_dataset_config(name, params, dataset_overrides), quality)


@functools.cache
def model_versions() -> dict[str, str]:
    """Libraries whose numerics decide trained weights and renders (a change reruns the step)."""
    versions = dict(library_versions())
    for package in ("torch", "open_clip_torch"):
        versions[package] = metadata.version(package)
    return versions


def digest(*parts: Any) -> str:
    blob = json.dumps([*parts, model_versions()], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def read_stamp(path: Path) -> dict[str, Any] | None:
    try:
        stamp = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def current_stamp(path: Path, expected: str) -> dict[str, Any] | None:
    """The stamp's payload when it was written for these inputs, else None."""
    stamp = read_stamp(path)
    if stamp is None or stamp.get("digest") != expected:
        return None
    return stamp


def write_stamp(path: Path, expected: str, **payload: Any) -> dict[str, Any]:
    stamp = {"digest": expected, **payload}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, stamp)
    return stamp


def write_csv(path: Path, header: list[str], rows: list[Any]) -> None:
    """Metrics and plot files for DVC, written whole or not at all."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, buffer.getvalue())


def stderr_steps(label: str, every: float = 0.1) -> Callable[[int, int, float], None]:
    """Training progress on stderr about every 10% (worker processes cannot call back)."""
    started = time.perf_counter()
    last = [0]

    def report(step: int, total: int, loss: float) -> None:
        if step == total or step - last[0] >= max(1, int(total * every)):
            last[0] = step
            elapsed = time.perf_counter() - started
            print(
                f"[{label}] step {step}/{total} loss {loss:.4f} ({elapsed:.0f}s)",
                file=sys.stderr,
                flush=True,
            )

    return report
