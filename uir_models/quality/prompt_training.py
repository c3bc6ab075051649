"""Training the quality perceiver's prompts on (LQ, MQ, HQ) triplets, and scoring images.

Batches are balanced over degradation types (Perceive-IR samples tasks evenly): a type is drawn
uniformly, then a sample carrying it. Each step's draws come from ``(seed, step)``, so a run
resumed from its checkpoint sees exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch

from uir_models.checkpoints import read_checkpoint, write_atomic
from uir_models.devices import resolve_device
from uir_models.quality.balance import Balance, balanced_indices, type_groups
from uir_models.quality.perceiver import (
    QUALITY_CLASSES,
    QualityPerceiver,
    clip_input_size,
    train_step,
)

_FORMAT = 1
log = logging.getLogger(__name__)


class TripletSet(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def labels(self, index: int) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class PerceiverTrainSettings:
    iterations: int = 100000
    batch_size: int = 32
    lr: float = 4e-5
    min_lr: float = 0.0
    weight_decay: float = 0.0
    crop: int | None = None  # None: the CLIP input size
    balance: Balance = "types"
    checkpoint_every: int = 1000
    seed: int = 0
    device: str = "auto"

    def digest(self, perceiver: QualityPerceiver) -> str:
        """What decides the learned prompts: settings (not device/cadence) and the CLIP used."""
        skipped = ("device", "checkpoint_every")
        relevant = {k: v for k, v in asdict(self).items() if k not in skipped}
        relevant["clip"] = [perceiver.model_name, perceiver.pretrained, perceiver.n_ctx]
        blob = json.dumps(relevant, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class PerceiverTrainResult:
    losses: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)  # of each training batch
    resumed_from: int = 0
    steps_per_second: float = 0.0


def crop_size(perceiver: QualityPerceiver, crop: int | None) -> int:
    return crop or clip_input_size(perceiver.clip)[0]


def _at_least(images: Sequence[np.ndarray], size: int) -> list[np.ndarray]:
    """Upscale aligned images together so the shorter side reaches ``size``."""
    height, width = images[0].shape[:2]
    if min(height, width) >= size:
        return list(images)
    scale = size / min(height, width)
    shape = (max(size, round(width * scale)), max(size, round(height * scale)))
    return [cv2.resize(image, shape, interpolation=cv2.INTER_CUBIC) for image in images]


def triplet_crop(
    images: Sequence[np.ndarray], size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """The same random crop and flip on every tier: the perceiver must judge quality, not
    content, so the three views have to stay pixel-aligned."""
    if len({image.shape for image in images}) != 1:
        raise ValueError(f"triplet shapes differ: {[image.shape for image in images]}")
    images = _at_least(images, size)
    height, width = images[0].shape[:2]
    top = int(rng.integers(0, height - size + 1))
    left = int(rng.integers(0, width - size + 1))
    flip = bool(rng.random() < 0.5)
    crops = [image[top : top + size, left : left + size] for image in images]
    return [np.ascontiguousarray(c[:, ::-1]) if flip else c for c in crops]


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Scoring view: the centre at the training scale (resizing would change the blur/noise
    the prompts were trained to see)."""
    (image,) = _at_least([image], size)
    height, width = image.shape[:2]
    top, left = (height - size) // 2, (width - size) // 2
    return image[top : top + size, left : left + size]


def to_tensor(images: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    batch = torch.from_numpy(np.stack(images)).to(device)
    return batch.permute(0, 3, 1, 2).float().div_(255.0)


def train_perceiver(
    perceiver: QualityPerceiver,
    triplets: TripletSet,
    settings: PerceiverTrainSettings,
    checkpoint: Path,
    progress: Callable[[int, int, float], None] | None = None,
    stop_after: int | None = None,
) -> PerceiverTrainResult:
    """Learn the three prompts with cross-entropy over bad/medium/good; resumable."""
    if len(triplets) == 0:
        raise ValueError("no triplets to train the quality perceiver on")
    device = resolve_device(settings.device)
    perceiver.to(device)
    optimizer = torch.optim.AdamW(
        [perceiver.ctx], lr=settings.lr, weight_decay=settings.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=settings.iterations, eta_min=settings.min_lr
    )
    result = PerceiverTrainResult()
    expected = settings.digest(perceiver)
    step = 0
    if checkpoint.is_file():
        state = read_checkpoint(checkpoint, "perceiver checkpoint")
        if state.get("digest") == expected and state.get("format") == _FORMAT:
            with torch.no_grad():
                perceiver.ctx.copy_(state["ctx"].to(device))
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            step = result.resumed_from = int(state["step"])
            result.losses, result.accuracies = list(state["losses"]), list(state["accuracies"])
        else:
            log.warning("perceiver checkpoint %s is for other settings: starting over", checkpoint)

    def save() -> None:
        write_atomic(
            {
                "format": _FORMAT,
                "digest": expected,
                "step": step,
                "ctx": perceiver.ctx.detach().cpu(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "losses": result.losses,
                "accuracies": result.accuracies,
            },
            checkpoint,
        )

    groups = type_groups(len(triplets), triplets.labels, settings.balance)
    size = crop_size(perceiver, settings.crop)
    end = settings.iterations if stop_after is None else min(settings.iterations, step + stop_after)
    report_every = max(1, settings.iterations // 100)
    started, first = time.perf_counter(), step
    while step < end:
        rng = np.random.default_rng([settings.seed, step])
        tiers: tuple[list[np.ndarray], ...] = ([], [], [])
        for index in balanced_indices(groups, settings.batch_size, rng):
            for tier, view in zip(tiers, triplet_crop(triplets[index], size, rng), strict=True):
                tier.append(view)
        loss, accuracy = train_step(
            perceiver, optimizer, *(to_tensor(tier, device) for tier in tiers)
        )
        scheduler.step()
        step += 1
        result.losses.append(loss)
        result.accuracies.append(accuracy)
        if step % settings.checkpoint_every == 0 or step == settings.iterations:
            save()
        if progress is not None and (step % report_every == 0 or step == end):
            progress(step, settings.iterations, result.losses[-1])
    if step != settings.iterations and step % settings.checkpoint_every:
        save()  # stopped early on purpose: keep the position
    elapsed = time.perf_counter() - started
    result.steps_per_second = (step - first) / elapsed if step > first and elapsed > 0 else math.nan
    perceiver.eval()
    return result


@torch.inference_mode()
def score_images(
    perceiver: QualityPerceiver,
    images: Sequence[np.ndarray],
    crop: int | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """P(terrible, mediocre, excellent) of each image's centre crop: (N, 3) float."""
    perceiver.eval()
    device = perceiver.ctx.device
    size = crop_size(perceiver, crop)
    out = []
    for start in range(0, len(images), batch_size):
        views = [center_crop(image, size) for image in images[start : start + batch_size]]
        out.append(perceiver.probabilities(to_tensor(views, device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(QUALITY_CLASSES)), np.float32)
