"""NAFNet restorer conditioned on DA-CLIP embeddings: the "NAFNet + DA-CLIP" variant of Luo et
al., "Controlling Vision-Language Models for Multi-Task Image Restoration" (ICLR 2024).

DA-CLIP gives two embeddings for an LQ image: a degradation embedding (what went wrong) and a
content embedding (what the clean image shows). They enter the NAFNet U-Net the way the paper's
restorers take them:

* the degradation embedding goes through an MLP shared by the whole network, and every NAFBlock
  turns the result into per-channel ``(shift, scale)`` pairs for its two normalised branches
  (``x * (1 + scale) + shift``): one network switches behaviour with the degradation type;
* the content embedding enters by cross-attention at the bottom of the U-Net (after the middle
  blocks and after each of the ``attn_levels`` deepest encoder and decoder levels), where the
  features are coarse and semantic enough to use a global description of the scene.

With ``content_attention: false`` there is no cross-attention and no content input: a NAFNet
switched by one condition vector (the proxy restorer conditioned on degradation types uses it).

Like :class:`~uir_models.archs.nafnet.NAFNet` the network predicts a residual, and with
``zero_init_output`` the untrained model returns the LQ image exactly, whatever the embeddings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from uir_models.archs.nafnet import LayerNorm2d, NAFBlock, NAFNetConfig, pad_to_multiple
from uir_models.config_keys import check_keys


@dataclass(frozen=True)
class NAFNetDaClipConfig:
    """Declarative size; the defaults are the paper's NAFNet (width 64, 28 blocks at the bottom
    encoder level) over ViT-B-32 DA-CLIP embeddings. Unknown keys are rejected."""

    in_channels: int = 3
    width: int = 64
    enc_blocks: Sequence[int] = field(default_factory=lambda: [1, 1, 1, 28])
    middle_blocks: int = 1
    dec_blocks: Sequence[int] = field(default_factory=lambda: [1, 1, 1, 1])
    zero_init_output: bool = True
    context_dim: int = 512  # size of both DA-CLIP embeddings (CLIP embed_dim)
    cond_hidden: int = 256  # width of the degradation MLP feeding the per-block modulations
    attn_levels: int = 1  # deepest encoder/decoder levels with content cross-attention
    attn_heads: int = 8
    content_attention: bool = True  # false: no cross-attention (and no content input) at all

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> NAFNetDaClipConfig:
        check_keys(cls, values, "NAFNet-DA-CLIP config")
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        NAFNetConfig(**{f.name: getattr(self, f.name) for f in fields(NAFNetConfig)}).validate()
        if self.context_dim < 1 or self.cond_hidden < 1 or self.attn_heads < 1:
            raise ValueError(
                f"context_dim, cond_hidden and attn_heads must be >= 1: {self.context_dim}, "
                f"{self.cond_hidden}, {self.attn_heads}"
            )
        levels = len(self.enc_blocks)
        if not self.content_attention:
            if self.attn_levels:
                raise ValueError("attn_levels must be 0 when content_attention is false")
            return
        if not 0 <= self.attn_levels <= levels:
            raise ValueError(f"attn_levels must be in [0, {levels}], got {self.attn_levels}")
        # Channels of the middle and of the attended levels: all must split into the heads.
        attended = [self.width * 2**i for i in range(levels - self.attn_levels, levels + 1)]
        bad = [c for c in attended if c % self.attn_heads]
        if bad:
            raise ValueError(f"attn_heads {self.attn_heads} must divide the channels {bad}")


class ModulatedNAFBlock(NAFBlock):
    """NAFBlock whose two normalised inputs are shifted and scaled per channel by the condition.

    ``beta``/``gamma`` still start at zero, so the block is the identity at init.
    """

    def __init__(self, channels: int, cond_hidden: int) -> None:
        super().__init__(channels)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_hidden, 4 * channels))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        shift1, scale1, shift2, scale2 = self.modulation(cond)[..., None, None].chunk(4, dim=1)
        y = self.norm1(x) * (1 + scale1) + shift1
        y = self.sg(self.conv2(self.conv1(y)))
        y = self.conv3(y * self.sca(y))
        x = x + y * self.beta
        y = self.norm2(x) * (1 + scale2) + shift2
        y = self.conv5(self.sg(self.conv4(y)))
        return x + y * self.gamma


class ContentCrossAttention(nn.Module):
    """Pixels attend to the content tokens: queries from the normalised feature map, keys and
    values from the context projected to the block's channels, added back as a residual.

    DA-CLIP passes the content embedding as a single token. A softmax over one key is
    identically 1: the attention would reduce to adding ``W_v @ content`` at every pixel and
    its query/key weights would never get a gradient. A learned null token (zero at init) is
    appended to the keys and values, so each pixel decides how much content to take in.
    The output projection starts at zero, so the module is the identity at init (like the
    NAFBlocks' ``beta``/``gamma``) and opens up as training needs it.
    """

    def __init__(self, channels: int, context_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = LayerNorm2d(channels)
        self.to_q = nn.Conv2d(channels, channels, 1, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * channels, bias=False)
        self.null_kv = nn.Parameter(torch.zeros(1, 1, 2 * channels))  # (key, value)
        self.to_out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.to_q(self.norm(x)).reshape(b, self.heads, c // self.heads, h * w).transpose(2, 3)
        kv = torch.cat([self.to_kv(context), self.null_kv.expand(b, -1, -1)], dim=1)
        # (B, T + 1, 2C) -> keys and values, each (B, heads, T + 1, C / heads)
        k, v = kv.reshape(b, -1, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C / heads)
        return x + self.to_out(out.transpose(2, 3).reshape(b, c, h, w))


class ConditionedStage(nn.Module):
    """One U-Net level: modulated NAFBlocks, then content cross-attention if the level has it."""

    def __init__(
        self, channels: int, blocks: int, cfg: NAFNetDaClipConfig, attention: bool
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ModulatedNAFBlock(channels, cfg.cond_hidden)
                                    for _ in range(blocks))
        self.attn = (
            ContentCrossAttention(channels, cfg.context_dim, cfg.attn_heads) if attention else None
        )

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor, context: torch.Tensor | None
    ) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, cond)
        if self.attn is None:
            return x
        assert context is not None  # NAFNetDaClip.forward checks it
        return self.attn(x, context)


class NAFNetDaClip(nn.Module):
    """NAFNet U-Net conditioned on DA-CLIP: ``forward(lq, degradation, content) = lq + f(...)``.

    ``degradation`` and ``content`` are ``(B, context_dim)`` embeddings; any HxW works (padded to
    ``size_multiple``, cropped back). With ``zero_init_output`` the last conv starts at zero and
    the untrained model is exactly the identity.
    """

    def __init__(self, config: NAFNetDaClipConfig | None = None) -> None:
        super().__init__()
        cfg = config or NAFNetDaClipConfig()
        cfg.validate()
        self.config = cfg
        levels = len(cfg.enc_blocks)
        self.degradation_mlp = nn.Sequential(
            nn.Linear(cfg.context_dim, cfg.cond_hidden),
            nn.GELU(),
            nn.Linear(cfg.cond_hidden, cfg.cond_hidden),
        )
        c = cfg.width
        self.intro = nn.Conv2d(cfg.in_channels, c, 3, padding=1)
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        for i, n in enumerate(cfg.enc_blocks):
            self.encoders.append(ConditionedStage(c, n, cfg, i >= levels - cfg.attn_levels))
            self.downs.append(nn.Conv2d(c, 2 * c, 2, stride=2))
            c *= 2
        self.middle = ConditionedStage(c, cfg.middle_blocks, cfg, cfg.content_attention)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i, n in enumerate(cfg.dec_blocks):  # deepest level first
            self.ups.append(nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.PixelShuffle(2)))
            c //= 2
            self.decoders.append(ConditionedStage(c, n, cfg, i < cfg.attn_levels))
        self.ending = nn.Conv2d(c, cfg.in_channels, 3, padding=1)
        if cfg.zero_init_output:
            nn.init.zeros_(self.ending.weight)
            nn.init.zeros_(self.ending.bias)

    @property
    def size_multiple(self) -> int:
        """Input sides are padded to this; tiling aligns tile origins to it (same pixel grid)."""
        return 2 ** len(self.encoders)

    def forward(
        self, lq: torch.Tensor, degradation: torch.Tensor, content: torch.Tensor | None = None
    ) -> torch.Tensor:
        h, w = lq.shape[-2:]
        if (content is None) == self.config.content_attention:
            raise ValueError(
                "pass a content embedding exactly when the model has content attention "
                f"(content_attention: {self.config.content_attention})"
            )
        inp = pad_to_multiple(lq, self.size_multiple)
        cond = self.degradation_mlp(degradation)
        context = None if content is None else content[:, None, :]  # one token, as DA-CLIP
        y = self.intro(inp)
        skips = []
        for enc, down in zip(self.encoders, self.downs, strict=True):
            y = enc(y, cond, context)
            skips.append(y)
            y = down(y)
        y = self.middle(y, cond, context)
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips), strict=True):
            y = dec(up(y) + skip, cond, context)
        y = self.ending(y) + inp
        return y[..., :h, :w]
