"""NAFNet-style restorer (Chen et al., "Simple Baselines for Image Restoration", 2022).

Written from the paper's description: a U-Net of NAFBlocks (LayerNorm, depthwise conv,
SimpleGate instead of nonlinear activations, simplified channel attention) that predicts a
residual, so the network outputs ``x + f(x)``. Sizes come from :class:`NAFNetConfig`, so the
CI-sized model and the paper-sized one are the same code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from uir_models.config_keys import check_keys


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad the bottom and right edges so both sides divide by ``multiple`` (crop back after).
    Replicate padding works for any size, even sides smaller than the padding."""
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x


class LayerNorm2d(nn.Module):
    """LayerNorm over channels at every pixel: pointwise, so it never couples distant pixels."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(dim=1, keepdim=True)
        var = (x - mu).pow(2).mean(dim=1, keepdim=True)
        return (x - mu) / torch.sqrt(var + self.eps) * self.weight + self.bias


class SimpleGate(nn.Module):
    """Split channels in half and multiply: NAFNet's replacement for GELU-like activations."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return a * b


class NAFBlock(nn.Module):
    """Conv branch (1x1, depthwise 3x3, gate, channel attention, 1x1) and a gated FFN.

    ``beta``/``gamma`` scale the two residual branches and start at zero, so every block is
    the identity at init; this keeps deep stacks stable early in training.
    """

    def __init__(self, channels: int, dw_expand: int = 2, ffn_expand: int = 2) -> None:
        super().__init__()
        dw = channels * dw_expand
        ffn = channels * ffn_expand
        self.norm1 = LayerNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, dw, 1)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.sg = SimpleGate()
        # Simplified channel attention: global average pool then a 1x1 conv, no nonlinearity.
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw // 2, dw // 2, 1))
        self.conv3 = nn.Conv2d(dw // 2, channels, 1)
        self.norm2 = LayerNorm2d(channels)
        self.conv4 = nn.Conv2d(channels, ffn, 1)
        self.conv5 = nn.Conv2d(ffn // 2, channels, 1)
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.sg(self.conv2(self.conv1(self.norm1(x))))
        y = self.conv3(y * self.sca(y))
        x = x + y * self.beta
        y = self.conv5(self.sg(self.conv4(self.norm2(x))))
        return x + y * self.gamma


@dataclass(frozen=True)
class NAFNetConfig:
    """Declarative NAFNet size; unknown keys are rejected so a typo in a config fails loudly."""

    in_channels: int = 3
    width: int = 32
    enc_blocks: Sequence[int] = field(default_factory=lambda: [2, 2, 4, 8])
    middle_blocks: int = 12
    dec_blocks: Sequence[int] = field(default_factory=lambda: [2, 2, 2, 2])
    zero_init_output: bool = True

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> NAFNetConfig:
        check_keys(cls, values, "NAFNet config")
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if len(self.enc_blocks) != len(self.dec_blocks):
            raise ValueError(
                f"enc_blocks {list(self.enc_blocks)} and dec_blocks {list(self.dec_blocks)} "
                "must have the same length (one decoder level per encoder level)"
            )
        if self.width < 1 or self.in_channels < 1 or self.middle_blocks < 0:
            raise ValueError(f"invalid NAFNet sizes: {self}")
        if any(n < 0 for n in [*self.enc_blocks, *self.dec_blocks]):
            raise ValueError("block counts must be >= 0")


class NAFNet(nn.Module):
    """U-Net of NAFBlocks predicting a residual: ``forward(x) = x + f(x)`` for any HxW.

    With ``zero_init_output`` the last conv starts at zero, so the untrained model is exactly
    the identity: a proxy restorer then starts from "return the LQ", never worse than it.
    """

    def __init__(self, config: NAFNetConfig | None = None) -> None:
        super().__init__()
        cfg = config or NAFNetConfig()
        cfg.validate()
        self.config = cfg
        c = cfg.width
        self.intro = nn.Conv2d(cfg.in_channels, c, 3, padding=1)
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        for n in cfg.enc_blocks:
            self.encoders.append(nn.Sequential(*[NAFBlock(c) for _ in range(n)]))
            self.downs.append(nn.Conv2d(c, 2 * c, 2, stride=2))
            c *= 2
        self.middle = nn.Sequential(*[NAFBlock(c) for _ in range(cfg.middle_blocks)])
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for n in cfg.dec_blocks:
            # 1x1 conv to 2c then PixelShuffle(2) gives c/2 channels at twice the resolution.
            self.ups.append(nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.PixelShuffle(2)))
            c //= 2
            self.decoders.append(nn.Sequential(*[NAFBlock(c) for _ in range(n)]))
        self.ending = nn.Conv2d(c, cfg.in_channels, 3, padding=1)
        if cfg.zero_init_output:
            nn.init.zeros_(self.ending.weight)
            nn.init.zeros_(self.ending.bias)

    @property
    def size_multiple(self) -> int:
        """Input sides are padded to this; tiling aligns tile origins to it (same pixel grid)."""
        return 2 ** len(self.encoders)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        inp = pad_to_multiple(x, self.size_multiple)
        y = self.intro(inp)
        skips = []
        for enc, down in zip(self.encoders, self.downs, strict=True):
            y = enc(y)
            skips.append(y)
            y = down(y)
        y = self.middle(y)
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips), strict=True):
            y = dec(up(y) + skip)
        y = self.ending(y) + inp
        return y[..., :h, :w]
