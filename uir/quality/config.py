"""Typed quality-labelling configuration: the ``quality.<dataset>`` entry of ``params.yaml``.

It lives beside ``datasets:`` rather than inside it so that each DVC stage can depend on just
the sub-mapping it reads: editing a curation threshold must not rebuild the base shards or
retrain the proxy restorers.
"""

from __future__ import annotations

import hashlib
import json
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

STEPS = ("proxy", "render", "perceiver", "label")
"""Quality steps in order; ``base`` (the shard build) comes before them."""

Tier = Literal["lq", "mq", "hq"]
TIERS: tuple[Tier, ...] = ("lq", "mq", "hq")
QualityClass = Literal["terrible", "mediocre", "excellent"]


class FoldConfig(Config):
    """Two folds by a salted hash of the HQ pixels: every LQ of one image lands in one fold."""

    salt: str = "perceive-ir"


class ProxyConfig(Config):
    """The proxy restorer of each fold (Perceive-IR reference: L1, AdamW 2e-4 -> 1e-6, 128 px)."""

    model: str = "nafnet-proxy"
    train_splits: tuple[SplitName, ...] = ("train",)
    iterations: int = Field(20000, ge=1)
    batch_size: int = Field(8, ge=1)
    patch_size: int = Field(128, ge=8)
    lr: float = Field(2e-4, gt=0)
    min_lr: float = Field(1e-6, ge=0)
    weight_decay: float = Field(1e-4, ge=0)
    # psnr: per-sample log MSE; spelt out, not uir_models.losses.PixelLoss, so reading params
    # does not import torch
    loss: Literal["l1", "psnr"] = "l1"
    # types: a degradation type uniformly, then a pair of it (as the perceiver's batches)
    balance: Literal["types", "none"] = "none"
    channel_shuffle: bool = False  # the same random RGB order on LQ and HQ of each crop
    # types: the proxy is told each image's degradation types (needs a model such as
    # nafnet-typed-tiny); none: a blind proxy, as the paper's
    condition: Literal["types", "none"] = "none"
    checkpoint_every: int = Field(500, ge=1)
    device: str = "auto"


class RenderConfig(Config):
    """Medium images: each fold's LQs restored by the other fold's proxy, tile by tile."""

    tile: int = Field(512, ge=16)
    overlap: int = Field(32, ge=0)
    device: str = "auto"

    @model_validator(mode="after")
    def _overlap_below_tile(self) -> RenderConfig:
        if self.overlap >= self.tile:
            raise ValueError(f"overlap {self.overlap} must be smaller than tile {self.tile}")
        return self


class PerceiverConfig(Config):
    """CoOp prompts over a frozen open_clip model (reference: ViT-B/32, AdamW 4e-5, batch 32)."""

    clip_model: str = "ViT-B-32"
    # an open_clip tag, or a checkpoint file relative to params.yaml; null = random (tests only)
    pretrained: str | None = "openai"
    n_ctx: int = Field(16, ge=1)
    iterations: int = Field(100000, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(4e-5, gt=0)
    min_lr: float = Field(0.0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    crop: int | None = Field(None, ge=8)  # None: the CLIP input size
    balance: Literal["types", "none"] = "types"
    train_splits: tuple[SplitName, ...] = ("train",)
    checkpoint_every: int = Field(1000, ge=1)
    batch_score: int = Field(64, ge=1)
    device: str = "auto"


class CurationRule(Config):
    """Drop or flag a sample when one tier's probability of one class exceeds ``above``."""

    name: str
    tier: Tier
    quality: QualityClass
    above: float = Field(ge=0.0, le=1.0)
    action: Literal["drop", "flag"] = "drop"
    splits: tuple[SplitName, ...] = ("train", "val", "test")


class CurationConfig(Config):
    rules: tuple[CurationRule, ...] = ()

    @model_validator(mode="after")
    def _unique_names(self) -> CurationConfig:
        names = [rule.name for rule in self.rules]
        if len(set(names)) != len(names):
            raise ValueError(f"curation rule names must be unique, got {names}")
        return self


class QualityConfig(Config):
    dataset: str
    seed: int = Field(0, ge=0)
    output: str  # the labelled shards
    work: str  # medium images and per-shard scores
    models: str  # proxy and prompt checkpoints
    reports: str  # DVC metrics and plots
    folds: FoldConfig = FoldConfig()
    proxy: ProxyConfig = ProxyConfig()
    render: RenderConfig = RenderConfig()
    perceiver: PerceiverConfig = PerceiverConfig()
    curation: CurationConfig = CurationConfig()
    root: str = "."

    def resolve_path(self, path: str) -> Path:
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else Path(self.root) / candidate

    def digest_of(self, *sections: str) -> str:
        """Hash of the named sections (devices excluded: they do not change the result)."""
        relevant: dict[str, Any] = {"seed": self.seed}
        for section in sections:
            value = getattr(self, section).model_dump(mode="json")
            if isinstance(value, dict):
                value.pop("device", None)
            relevant[section] = value
        blob = json.dumps(relevant, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def load_quality_config(
    name: str, path: str | Path = PARAMS_FILE, overrides: dict[str, Any] | None = None
) -> QualityConfig | None:
    """``quality.<name>`` of params.yaml, or None when the dataset has no quality labelling."""
    path = Path(path)
    entries = load_params(path).get("quality") or {}
    if not isinstance(entries, dict):
        raise ConfigError(f"{path}: 'quality:' must be a mapping of dataset names")
    if name not in entries:
        if overrides:
            raise ConfigError(f"{path}: quality overrides given but no quality.{name} entry")
        return None
    entry = merge(dict(entries[name] or {}), overrides or {})
    entry.setdefault("dataset", name)
    entry.setdefault("root", str(path.resolve().parent))
    return validate_entry(QualityConfig, entry, f"{path}: quality.{name}")
