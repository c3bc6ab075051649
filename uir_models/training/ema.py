"""Exponential moving average of a model's weights (evaluated instead of the raw weights).

Kept as a full copy of the module, so evaluating with EMA weights is calling ``ema.module``:
no swapping in and out of the trained model, which would be easy to get wrong around DDP.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class ModelEma:
    """``shadow <- decay * shadow + (1 - decay) * weight`` after every optimiser step.

    Floating-point parameters and buffers are averaged; integer buffers (counters) are copied.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        current = model.state_dict()
        for name, shadow in self.module.state_dict().items():
            value = current[name].detach()
            if shadow.is_floating_point():
                shadow.lerp_(value.to(shadow.dtype), 1.0 - self.decay)
            else:
                shadow.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state)
