"""Typed training configuration: the ``training:`` entry of ``params.yaml``.

One entry, several named profiles (``demo``: tiny models on a CPU in minutes; ``paper``: the
reference's sizes and schedules on GPUs); ``training.profile`` selects the one that DVC and the
deployments run. Output folders sit outside the profiles, so the DVC stages name fixed paths;
switching profile changes every run digest and the checkpoints start over rather than resume.
The loader and optimiser blocks are checked against ``uir_models``' own config types when the
file is read, so a misspelt key fails before any process starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from degradations.config import Config, merge
from uir.dataset.config import (
    PARAMS_FILE,
    ConfigError,
    SplitName,
    load_params,
    validate_entry,
)

STEPS = ("controller", "restorer", "evaluate")
"""Training steps in order; each is one DVC stage (``train_controller``, ``train_restorer``,
``evaluate``) and one task of the ``train-controller`` / ``train-restorer`` flows."""
DVC_STAGES = {
    "controller": "train_controller",
    "restorer": "train_restorer",
    "evaluate": "evaluate",
}


def _check_loop_blocks(data: dict[str, Any], train: dict[str, Any]) -> None:
    # Imported here: reading params.yaml for a dataset build must not need torch.
    from uir_models.data import LoaderConfig
    from uir_models.training import TrainConfig

    for block, check, values in (
        ("data", LoaderConfig.from_dict, data),
        ("train", TrainConfig.from_dict, train),
    ):
        try:
            check(values)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{block}: {err}") from None


class ControllerSection(Config):
    """The DA-CLIP controller: a ``uir_models`` factory config and its loop settings."""

    model: str = "daclip-vit-b-32"
    model_overrides: dict[str, Any] = Field(default_factory=dict)
    split: SplitName = "train"
    data: dict[str, Any] = Field(default_factory=dict)  # uir_models.data.LoaderConfig fields
    train: dict[str, Any] = Field(default_factory=lambda: {"iterations": 1000})  # TrainConfig

    @model_validator(mode="after")
    def _loop_blocks(self) -> ControllerSection:
        _check_loop_blocks(self.data, self.train)
        return self


class ClipLossSection(Config):
    """Perceive-IR ``L_clip`` from the prompts that ``quality.<quality>`` learned."""

    quality: str
    weight: float = Field(gt=0)


class RestorerSection(Config):
    """One restorer: ``direct`` (NAFNet + DA-CLIP, or a plain NAFNet) or ``sde`` (IR-SDE)."""

    model: str
    method: Literal["direct", "sde"] = "direct"
    # direct only (the SDE has its own loss); uir_models.losses.PixelLoss spelt out, so reading
    # params does not import torch
    pixel_loss: Literal["l1", "mse", "psnr"] = "l1"
    sde: dict[str, Any] = Field(default_factory=dict)  # uir_models.sde.SdeConfig fields
    eval_steps: int | None = Field(None, ge=1)  # SDE reverse steps in evaluation (None: T)
    clip_loss: ClipLossSection | None = None
    split: SplitName = "train"
    data: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=lambda: {"iterations": 1000})

    @model_validator(mode="after")
    def _loop_blocks(self) -> RestorerSection:
        _check_loop_blocks(self.data, self.train)
        if self.method == "sde":
            from uir_models.sde import SdeConfig

            SdeConfig.from_dict(self.sde)
        elif self.sde:
            raise ValueError("'sde' settings are only for method: sde")
        return self


class EvaluateSection(Config):
    """Held-out scores: PSNR/SSIM (RGB and Y), LPIPS when its weights load, controller top-1."""

    split: SplitName = "val"
    crop_border: int = Field(0, ge=0)
    crop_size: int | None = Field(None, ge=8)  # None: full images (batch 1)
    batch_size: int = Field(1, ge=1)
    lpips: bool = True  # skipped, with the reason recorded, when lpips or its weights are missing
    lpips_net: Literal["alex", "vgg", "squeeze"] = "alex"
    seed: int = Field(0, ge=0)  # noise of SDE sampling


class ProfileConfig(Config):
    dataset: str  # a datasets: entry; its shards are the input
    nproc: int = Field(1, ge=1)  # torchrun processes per node (one per GPU)
    nnodes: int = Field(1, ge=1)
    rdzv_endpoint: str | None = None  # host:port of node 0, needed when nnodes > 1
    device: str = "auto"  # auto: CUDA when available (NCCL), else CPU (gloo)
    embed_batch: int = Field(32, ge=1)
    controller: ControllerSection = ControllerSection()
    restorers: dict[str, RestorerSection] = Field(default_factory=dict)
    evaluate: EvaluateSection = EvaluateSection()

    @model_validator(mode="after")
    def _multi_node(self) -> ProfileConfig:
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("nnodes > 1 needs rdzv_endpoint (host:port of the first node)")
        return self


class TrainingConfig(Config):
    profile: str
    output: str = "models/train"  # controller/, restorers/<name>/, restorers/embeddings.pt
    reports: str = "reports/train"
    profiles: dict[str, ProfileConfig]
    root: str = "."

    @model_validator(mode="after")
    def _known_profile(self) -> TrainingConfig:
        if self.profile not in self.profiles:
            raise ValueError(f"profile {self.profile!r} is not one of {sorted(self.profiles)}")
        return self

    @property
    def selected(self) -> ProfileConfig:
        return self.profiles[self.profile]

    def resolve_path(self, path: str) -> Path:
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else Path(self.root) / candidate


def load_training_config(
    path: str | Path = PARAMS_FILE,
    *,
    profile: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainingConfig:
    """``training:`` of params.yaml; ``profile`` picks another profile, ``overrides`` (dotted
    keys) patch the selected profile."""
    path = Path(path)
    entry = load_params(path).get("training")
    if not isinstance(entry, dict):
        raise ConfigError(f"{path}: no 'training:' mapping (see params.yaml in the repository)")
    entry = dict(entry)
    if profile is not None:
        entry["profile"] = profile
    name = entry.get("profile")
    profiles = dict(entry.get("profiles") or {})
    if overrides:
        if name not in profiles:
            raise ConfigError(f"{path}: training.profile {name!r} is not defined")
        profiles[name] = merge(dict(profiles[name] or {}), overrides)
    entry["profiles"] = profiles
    entry.setdefault("root", str(path.resolve().parent))
    return validate_entry(TrainingConfig, entry, f"{path}: training")
