"""What the training loop drives: a model, its loss and its evaluation.

The loop owns everything generic (devices, DDP, AMP, EMA, schedules, checkpoints, logs); a
task only says how a batch turns into losses and metrics: the plain restorer, the DA-CLIP
controller, a restorer conditioned on DA-CLIP embeddings (direct, like NAFNet, or through the
IR-SDE), each with the optional Perceive-IR ``L_clip``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from uir_models.losses import PixelLoss, loss_identity, restoration_loss
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

    def objective(self) -> dict[str, Any]:
        """JSON settings of what ``loss`` minimises beyond the model's own config: part of the
        run's resume digest, so a changed objective starts over instead of resuming."""
        ...


@runtime_checkable
class EvaluatedTask(TrainTask, Protocol):
    def evaluate(self, model: nn.Module, batch: Batch) -> dict[str, float]:
        """Per-sample means over one evaluation batch (the loop weights them by batch size)."""
        ...


QualityLoss = Callable[[torch.Tensor], torch.Tensor]
"""Images in [0, 1] -> a scalar to minimise (Perceive-IR's ``L_clip``: 1 - P(excellent))."""


def _with_quality(
    parts: dict[str, torch.Tensor],
    pred: torch.Tensor,
    quality_loss: QualityLoss | None,
    weight: float,
) -> dict[str, torch.Tensor]:
    """Add ``weight * L_clip(pred)`` to the loss; the pixel term stays logged on its own."""
    if quality_loss is None or weight == 0.0:
        return parts
    clip = quality_loss(pred.clamp(0.0, 1.0))
    return {**parts, "loss": parts["loss"] + weight * clip, "clip_loss": clip}


MAX_PSNR = 100.0
"""Cap of a sample's PSNR in training-time evaluation: a crop the degradation missed has
LQ == HQ (infinite PSNR), which would make the batch mean meaningless."""


def _psnr_pair(pred: torch.Tensor, batch: Batch) -> dict[str, float]:
    pred = pred.float().clamp(0.0, 1.0)
    lq, hq = batch["lq"], batch["hq"]
    return {
        "psnr": psnr_torch(pred, hq).clamp(max=MAX_PSNR).mean().item(),
        "psnr_identity": psnr_torch(lq, hq).clamp(max=MAX_PSNR).mean().item(),
    }


class RestorerTask:
    """A plain image restorer (LQ in, HQ out) trained with L1, the NAFNet/Perceive-IR recipe."""

    def __init__(
        self,
        model: nn.Module,
        *,
        pixel_loss: PixelLoss = "l1",
        quality_loss: QualityLoss | None = None,
        quality_weight: float = 0.0,
        quality_source: str | None = None,
    ) -> None:
        """``quality_source`` names what ``quality_loss`` is (e.g. the learned prompts'
        digest), so relearned prompts start the run over instead of resuming it."""
        self.model = model
        self.pixel_loss = pixel_loss
        self.quality_loss = quality_loss
        self.quality_weight = quality_weight
        self.quality_source = quality_source

    def objective(self) -> dict[str, Any]:
        if self.quality_loss is None:
            return loss_identity(self.pixel_loss)
        return {
            **loss_identity(self.pixel_loss),
            "quality_weight": self.quality_weight,
            "quality_source": self.quality_source,
        }

    def restore(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return model(batch["lq"])

    def loss(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        pred = self.restore(model, batch).float()
        parts = {"loss": restoration_loss(pred, batch["hq"], self.pixel_loss)}
        return _with_quality(parts, pred, self.quality_loss, self.quality_weight)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batch: Batch) -> dict[str, float]:
        """PSNR of the restored images and of the input itself: the gain is what training
        bought (an untrained NAFNet is the identity)."""
        return _psnr_pair(self.restore(model, batch), batch)


class ConditionedRestorerTask(RestorerTask):
    """A restorer fed the DA-CLIP embeddings of its LQ (NAFNet + DA-CLIP): the batch carries
    them precomputed (``degra_emb``, ``content_emb``), so CLIP never runs in the step."""

    def restore(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return model(batch["lq"], batch["degra_emb"], batch["content_emb"])


class SdeRestorerTask:
    """The IR-SDE U-Net with DA-CLIP: noise matching in training, posterior sampling to
    evaluate (``eval_steps`` reverse steps; fewer than the SDE's T only for quick checks)."""

    def __init__(self, model: nn.Module, sde: Any, *, eval_steps: int | None = None) -> None:
        self.model = model
        self.sde = sde
        self.eval_steps = eval_steps

    def objective(self) -> dict[str, Any]:
        return {"sde": asdict(self.sde.config)}

    @staticmethod
    def _denoiser(model: nn.Module, batch: Batch) -> Callable[..., torch.Tensor]:
        degra, content = batch["degra_emb"], batch["content_emb"]
        return lambda x, mu, t: model(x, mu, t, degra, content)

    def loss(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        loss = self.sde.training_loss(self._denoiser(model, batch), batch["hq"], batch["lq"])
        return {"loss": loss}

    def restore(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.sde.restore(self._denoiser(model, batch), batch["lq"], steps=self.eval_steps)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batch: Batch) -> dict[str, float]:
        return _psnr_pair(self.restore(model, batch), batch)


class ControllerTask:
    """The DA-CLIP controller on LQ images: content InfoNCE against the captions of the clean
    images plus the floor-free degradation loss over the type texts (``archs.daclip``).

    ``batch["labels"]`` must be multi-hot in the model's ``degradation_types`` order (build the
    loader with those types); rows without a known type are skipped by the degradation loss.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def objective(self) -> dict[str, Any]:
        return {}  # the losses are the controller's own, set by its config

    def loss(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        # The forward goes through ``model`` (the DDP wrapper syncs its gradients); the loss
        # terms are the controller's own methods, outside the wrapper.
        out = model(batch["lq"], batch["caption"])
        return self.model.loss(out, batch["labels"])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batch: Batch) -> dict[str, float]:
        """Top-1 among the sample's labels (zero-shot against the type texts)."""
        labels = batch["labels"]
        known = labels.sum(dim=-1) > 0
        if not known.any():
            return {"top1": 0.0}
        predicted = model.classify(batch["lq"]).argmax(dim=-1)
        hits = labels[torch.arange(len(labels), device=labels.device), predicted] > 0
        return {"top1": hits[known].float().mean().item()}
