"""Pixel losses of restorers, one place for the proxy restorer and the training tasks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PIXEL_LOSSES = ("l1", "mse", "psnr")


def restoration_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """``psnr``: minus the mean per-sample PSNR (log MSE), the metric restorers are scored by;
    unlike L1/MSE it weighs an error on a nearly clean sample as much as on a badly degraded
    one, so a mixed-type batch does not teach over-processing of mild degradations."""
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "mse":
        return F.mse_loss(pred, target)
    if kind == "psnr":
        mse = (pred - target).pow(2).mean(dim=(1, 2, 3))
        return (10.0 / math.log(10.0)) * torch.log(mse + 1e-8).mean()
    raise ValueError(f"unknown pixel loss {kind!r}; use one of {', '.join(PIXEL_LOSSES)}")
