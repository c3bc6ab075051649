"""Where a training profile reads and writes: one object every step and process agrees on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uir.dataset.config import PARAMS_FILE, DatasetConfig, load_dataset_config
from uir.training.config import TrainingConfig, load_training_config

EMBEDDINGS = "embeddings.pt"
EMBEDDINGS_STAMP = "embeddings.json"


class TrainingError(RuntimeError):
    """A training step cannot run (missing shards, no trained controller...)."""


@dataclass(frozen=True)
class TrainingJob:
    params: Path
    training: TrainingConfig
    dataset: DatasetConfig

    @property
    def profile(self) -> str:
        return self.training.profile

    @property
    def shards_dir(self) -> Path:
        return self.dataset.output_dir

    @property
    def output_dir(self) -> Path:
        return self.training.resolve_path(self.training.output)

    @property
    def controller_dir(self) -> Path:
        return self.output_dir / "controller"

    @property
    def restorers_dir(self) -> Path:
        return self.output_dir / "restorers"

    def restorer_dir(self, name: str) -> Path:
        return self.restorers_dir / name

    @property
    def embeddings(self) -> Path:
        return self.restorers_dir / EMBEDDINGS

    @property
    def reports_dir(self) -> Path:
        return self.training.resolve_path(self.training.reports)


def load_training_job(
    params: str | Path = PARAMS_FILE,
    *,
    profile: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainingJob:
    params = Path(params).resolve()
    training = load_training_config(params, profile=profile, overrides=overrides)
    dataset = load_dataset_config(training.selected.dataset, params)
    return TrainingJob(params, training, dataset)
