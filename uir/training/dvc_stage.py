"""Under `dvc repro`, refuse a training stage whose dvc.yaml entry does not declare what it
reads and writes.

DVC templating cannot nest (``${datasets.${training.profiles.${training.profile}.dataset}...}``),
so dvc.yaml names the training data and model folders literally. A profile that reads another
dataset, or an ``output`` moved elsewhere, would otherwise train on data DVC does not track,
or write models it does not version: the stage would never re-run when that data changes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from uir.training.job import TrainingError, TrainingJob

_OUTPUT_SECTIONS = ("outs", "metrics", "plots")


def stage_paths(stage: Mapping[str, Any], sections: Iterable[str]) -> list[str]:
    """Paths a dvc.yaml stage lists under ``sections`` (entries are strings or one-key maps)."""
    paths: list[str] = []
    for section in sections:
        for entry in stage.get(section) or []:
            paths.extend([entry] if isinstance(entry, str) else list(entry))
    return paths


def step_paths(job: TrainingJob, step: str) -> tuple[list[Path], list[Path]]:
    """(read, written) folders and files of a training step, as its stage must declare them."""
    if step == "controller":
        return [job.shards_dir], [job.controller_dir]
    if step == "restorer":
        return [job.shards_dir, job.controller_dir], [job.restorers_dir]
    if step == "evaluate":
        return [job.shards_dir, job.controller_dir, job.restorers_dir], [
            job.reports_dir / "metrics.json"
        ]
    raise ValueError(f"no DVC stage runs the training step {step!r}")


def undeclared(declared: Iterable[str], needed: Iterable[Path], root: Path) -> list[str]:
    """``needed`` paths that no declared path covers (itself or a folder above it)."""
    covered = [(root / path).resolve() for path in declared]
    missing = []
    for path in needed:
        path = path.resolve()
        if not any(path == c or path.is_relative_to(c) for c in covered):
            missing.append(os.path.relpath(path, root))
    return missing


def check_dvc_stage(job: TrainingJob, step: str, environ: Mapping[str, str] = os.environ) -> None:
    """Raise :class:`TrainingError` when DVC runs ``step`` as a stage (``DVC_STAGE`` and
    ``DVC_ROOT`` set) whose ``dvc.yaml`` entry misses a path the step reads or writes.
    Outside DVC, for a stage not defined in the root dvc.yaml, or one with templated paths,
    there is nothing to check."""
    name, root = environ.get("DVC_STAGE"), environ.get("DVC_ROOT")
    if not name or not root or not (Path(root) / "dvc.yaml").is_file():
        return
    root_path = Path(root).resolve()
    stages = yaml.safe_load((root_path / "dvc.yaml").read_text()).get("stages") or {}
    stage = stages.get(name)
    if not isinstance(stage, Mapping):
        return
    deps, outs = stage_paths(stage, ["deps"]), stage_paths(stage, _OUTPUT_SECTIONS)
    if any("${" in path for path in deps + outs):
        return  # templated paths: DVC resolves them, and so can only DVC
    reads, writes = step_paths(job, step)
    problems = []
    if missing := undeclared(deps, reads, root_path):
        problems.append(f"deps lack {', '.join(missing)}")
    if missing := undeclared(outs, writes, root_path):
        problems.append(f"outs lack {', '.join(missing)}")
    if problems:
        raise TrainingError(
            f"dvc.yaml stage {name!r} does not match training profile {job.profile!r} "
            f"(dataset {job.dataset.name!r}): {'; '.join(problems)}. DVC would not track what "
            f"this step uses; edit the stage's paths in dvc.yaml to the profile's."
        )
