"""What the training loop drives: a model, its loss and its evaluation.

The loop owns everything generic (devices, DDP, AMP, EMA, schedules, checkpoints, logs); a
task only says how a batch turns into losses and metrics. The DA-CLIP controller and the
DA-CLIP restorers plug in as further tasks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from uir_models.metrics import psnr_torch

Batch = Mapping[str, Any]


@runtime_checkable
class TrainTask(Protocol):
    """A trainable model and how to score it.

    ``loss`` and ``evaluate`` get the module to call as an argument instead of using
    ``self.model``: under DDP the loop passes its wrapper (whose forward syncs gradients), and
    with EMA on it passes the averaged copy to ``evaluate``.
    """

    model: nn.Module

    def loss(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """Scalar losses of one training batch; ``"loss"`` is the one minimised."""
        ...


@runtime_checkable
class EvaluatedTask(TrainTask, Protocol):
    def evaluate(self, model: nn.Module, batch: Batch) -> dict[str, float]:
        """Per-sample means over one evaluation batch (the loop weights them by batch size)."""
        ...


class RestorerTask:
    """A plain image restorer (LQ in, HQ out) trained with L1, the NAFNet/Perceive-IR recipe."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def loss(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        pred = model(batch["lq"])
        return {"loss": F.l1_loss(pred.float(), batch["hq"])}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batch: Batch) -> dict[str, float]:
        """PSNR of the restored images and of the input itself: the gain is what training
        bought (an untrained NAFNet is the identity)."""
        lq, hq = batch["lq"], batch["hq"]
        pred = model(lq).float().clamp(0.0, 1.0)
        return {
            "psnr": psnr_torch(pred, hq).mean().item(),
            "psnr_identity": psnr_torch(lq, hq).mean().item(),
        }
