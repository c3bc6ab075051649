"""Perceive-IR three-tier quality: the prompt-learned CLIP quality perceiver."""

from uir_models.quality.perceiver import (
    QUALITY_CLASSES,
    ClipBundle,
    QualityPerceiver,
    WeightsUnavailableError,
    load_clip,
    train_step,
    triplet_crops,
)

__all__ = [
    "QUALITY_CLASSES",
    "ClipBundle",
    "QualityPerceiver",
    "WeightsUnavailableError",
    "load_clip",
    "train_step",
    "triplet_crops",
]
