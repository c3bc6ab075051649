"""Pixel losses of restorers, one place for the proxy restorer and the training tasks."""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F

PixelLoss = Literal["l1", "mse", "psnr"]
PIXEL_LOSSES: tuple[str, ...] = get_args(PixelLoss)
PSNR_LOSS_FLOOR = 1e-4
"""Added to each sample's MSE in the ``psnr`` loss, so the loss saturates near 40 dB: without
it a nearly clean crop (a flat region, MSE ~1e-7) gives a gradient 1e4x the others and Adam's
second moment then holds every later step near zero, so the model never leaves the identity."""


def loss_identity(kind: PixelLoss) -> dict[str, Any]:
    """What a checkpoint trained under this loss must match to be resumed (the floor is part of
    the PSNR loss: a run started with another floor optimised something else)."""
    return {"pixel_loss": kind, **({"psnr_floor": PSNR_LOSS_FLOOR} if kind == "psnr" else {})}


def restoration_loss(pred: torch.Tensor, target: torch.Tensor, kind: PixelLoss) -> torch.Tensor:
    """``psnr``: minus the mean per-sample PSNR (log MSE), the metric restorers are scored by;
    unlike L1/MSE it weighs an error on a nearly clean sample as much as on a badly degraded
    one, so a mixed-type batch does not teach over-processing of mild degradations."""
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "mse":
        return F.mse_loss(pred, target)
    if kind == "psnr":
        mse = (pred - target).pow(2).mean(dim=(1, 2, 3))
        return (10.0 / math.log(10.0)) * torch.log(mse + PSNR_LOSS_FLOOR).mean()
    raise ValueError(f"unknown pixel loss {kind!r}; use one of {', '.join(PIXEL_LOSSES)}")
