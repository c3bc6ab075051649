"""IR-SDE conditional U-Net with DA-CLIP conditioning (Luo et al., DA-CLIP, ICLR 2024).

The noise predictor of the IR-SDE restorer (see :mod:`uir_models.sde`). Written from the
papers and checked against the structure of the reference ``ConditionalUNet``
(Algolzw/daclip-uir, ``DenoisingUNet_arch.py``); the code is our own:

* input: the noisy state ``x_t`` and the LQ image ``mu``, as ``concat(x_t - mu, mu)``
  (6 channels; ``x_t - mu`` is the reference's "initial guess of the noise", a fixed linear
  re-parametrisation of ``concat(x_t, mu)``), then a 7x7 conv to ``nf`` channels;
* a U-Net of time-conditioned residual blocks (scale/shift from the time embedding), ``nf *
  ch_mult[i]`` channels per level, ``res_blocks`` blocks per level, each saving a skip;
* attention after the blocks of every level: linear (channel) self-attention at all levels but
  the deepest, where a transformer block (self-attention, cross-attention to the DA-CLIP content
  embedding, GEGLU feed-forward) is used instead, as in the middle block. The content embedding
  therefore only enters at the lowest resolution, where attention over all positions is cheap;
* the DA-CLIP degradation embedding goes through the prompt module
  ``Linear(context, prompt) -> SiLU -> Linear(prompt, prompt) -> softmax -> * learned prompt ->
  Linear(prompt, time)`` and is added to the time embedding, so it modulates every block.

Sizes come from :class:`ConditionalUNetConfig`; the CI-sized and paper-sized models are the
same code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from uir_models.config_keys import check_keys


@dataclass(frozen=True)
class ConditionalUNetConfig:
    """Declarative U-Net size; defaults are the paper's (nf 64, ch_mult 1,2,4,8, context 512).

    ``in_channels`` is the image channel count: the network sees ``2 * in_channels`` (the state
    and the LQ) and predicts ``in_channels`` of noise. The time embedding has ``4 * nf``
    channels (256 in the paper, equal to ``prompt_dim`` there). Cross-attention heads are
    ``attn_heads`` if set, else ``channels // attn_head_dim`` (the reference: 32-channel heads,
    so the head count grows with depth). Unknown keys are rejected so a typo fails loudly.
    """

    in_channels: int = 3
    nf: int = 64
    ch_mult: Sequence[int] = field(default_factory=lambda: [1, 2, 4, 8])
    res_blocks: int = 2
    context_dim: int = 512
    prompt_dim: int = 256
    attn_heads: int | None = None
    attn_head_dim: int = 32
    transformer_depth: int = 1
    linear_attn_heads: int = 4
    linear_attn_head_dim: int = 32
    zero_init_attention: bool = True

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ConditionalUNetConfig:
        check_keys(cls, values, "ConditionalUNet config")
        cfg = cls(**values)
        cfg.validate()
        return cfg

    @property
    def time_dim(self) -> int:
        return 4 * self.nf

    def attention_channels(self) -> list[int]:
        """Channel counts of the cross-attention blocks: deepest down, mid, deepest up."""
        mults = [1, *self.ch_mult]
        return [self.nf * mults[-2], self.nf * mults[-1], self.nf * mults[-1]]

    def heads_for(self, channels: int) -> tuple[int, int]:
        """(heads, head_dim) of a cross-attention block with ``channels`` channels."""
        if self.attn_heads is not None:
            return self.attn_heads, channels // self.attn_heads
        return channels // self.attn_head_dim, self.attn_head_dim

    def validate(self) -> None:
        if self.in_channels < 1 or self.res_blocks < 1 or self.transformer_depth < 1:
            raise ValueError(f"invalid ConditionalUNet sizes: {self}")
        if self.nf < 4 or self.nf % 2:
            raise ValueError(f"nf must be even and >= 4 (sinusoidal time embedding), got {self.nf}")
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            raise ValueError(f"ch_mult must be a non-empty list of positive ints: {self.ch_mult}")
        if self.context_dim < 1 or self.prompt_dim < 1:
            raise ValueError("context_dim and prompt_dim must be >= 1")
        if self.linear_attn_heads < 1 or self.linear_attn_head_dim < 1:
            raise ValueError("linear attention heads and head dim must be >= 1")
        if self.attn_heads is None and self.attn_head_dim < 1:
            raise ValueError("attn_head_dim must be >= 1")
        for channels in self.attention_channels():
            heads, head_dim = self.heads_for(channels)
            if heads < 1 or head_dim < 1 or heads * head_dim != channels:
                raise ValueError(
                    f"cross-attention over {channels} channels cannot be split into heads "
                    f"(attn_heads={self.attn_heads}, attn_head_dim={self.attn_head_dim})"
                )


def _conv(dim_in: int, dim_out: int, kernel_size: int = 3, bias: bool = False) -> nn.Conv2d:
    """Same-size conv; bias-free like the reference (the block norms and scale/shift follow)."""
    return nn.Conv2d(dim_in, dim_out, kernel_size, padding=kernel_size // 2, bias=bias)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels at every pixel, gain only (no bias), as the reference PreNorm."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Explicit mean/var: torch.var_mean over dim 1 of NCHW is many times slower on CPU.
        centred = x - x.mean(dim=1, keepdim=True)
        var = centred.pow(2).mean(dim=1, keepdim=True)
        return centred * torch.rsqrt(var + 1e-5) * self.gain


class SinusoidalTimeEmbedding(nn.Module):
    """Transformer-style sin/cos features of the (float) timestep."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(
            torch.arange(half, device=t.device, dtype=torch.float32)
            * (-math.log(10000) / (half - 1))
        )
        args = t.float()[:, None] * freqs[None, :]
        return torch.cat([args.sin(), args.cos()], dim=-1)


class ResBlock(nn.Module):
    """Two conv-SiLU layers and a skip; the time embedding scales and shifts the first layer."""

    def __init__(self, dim_in: int, dim_out: int, time_dim: int) -> None:
        super().__init__()
        self.time_mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, 2 * dim_out))
        self.conv1 = _conv(dim_in, dim_out)
        self.conv2 = _conv(dim_out, dim_out)
        self.act = nn.SiLU()
        self.skip = _conv(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.time_mlp(time_emb)[:, :, None, None].chunk(2, dim=1)
        h = self.act(self.conv1(x) * (scale + 1) + shift)
        h = self.act(self.conv2(h))
        return h + self.skip(x)


class LinearAttention(nn.Module):
    """Residual, pre-normed linear attention (softmax over channels for q, positions for k).

    Cost is linear in the number of pixels, so it can run at full resolution.
    """

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = head_dim**-0.5
        hidden = heads * head_dim
        self.norm = ChannelLayerNorm(dim)
        self.to_qkv = nn.Conv2d(dim, 3 * hidden, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden, dim, 1), ChannelLayerNorm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = self.to_qkv(self.norm(x)).reshape(b, 3, self.heads, -1, h * w).unbind(1)
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        v = v / (h * w)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q).reshape(b, -1, h, w)
        return x + self.to_out(out)


class Attention(nn.Module):
    """Multi-head attention over token sequences; keys/values from ``context`` if given."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None = None) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.reshape(y.shape[0], y.shape[1], self.heads, -1).transpose(1, 2)

        q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).flatten(2))


class GEGLU(nn.Module):
    """GELU-gated feed-forward (4x hidden), as in latent-diffusion transformer blocks."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2 * dim * mult)
        self.out = nn.Linear(dim * mult, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return self.out(a * F.gelu(gate))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to the context, feed-forward; all residual."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, heads, head_dim, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = GEGLU(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x))
        x = x + self.cross_attn(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups as usual, fewer when the (tiny) channel count is not a multiple."""
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6)


class CrossAttentionBlock(nn.Module):
    """Spatial transformer: pixels as tokens attending to each other and to the content tokens.

    The output projection starts at zero (``zero_init``), so at init the block is the identity
    and the content embedding has no effect until training finds a use for it.
    """

    def __init__(
        self, dim: int, heads: int, head_dim: int, context_dim: int, depth: int = 1,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        inner = heads * head_dim
        self.norm = _group_norm(dim)
        self.proj_in = nn.Conv2d(dim, inner, 1)
        self.blocks = nn.ModuleList(
            TransformerBlock(inner, heads, head_dim, context_dim) for _ in range(depth)
        )
        self.proj_out = nn.Conv2d(inner, dim, 1)
        if zero_init:
            nn.init.zeros_(self.proj_out.weight)
            nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        y = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        for block in self.blocks:
            y = block(y, context)
        return x + self.proj_out(y.transpose(1, 2).reshape(b, -1, h, w))


class PromptModule(nn.Module):
    """Degradation embedding -> a softmax mixture of a learned prompt -> time-embedding offset.

    The softmax turns the DA-CLIP degradation features into weights over the prompt's entries;
    the learned prompt (uniform [0, 1) init, like the reference) scales them, and a final
    linear map brings the result to the time embedding it is added to.
    """

    def __init__(self, context_dim: int, prompt_dim: int, time_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(context_dim, prompt_dim), nn.SiLU(), nn.Linear(prompt_dim, prompt_dim)
        )
        self.prompt = nn.Parameter(torch.rand(1, prompt_dim))
        self.proj = nn.Linear(prompt_dim, time_dim)

    def forward(self, degradation: torch.Tensor) -> torch.Tensor:
        return self.proj(self.mlp(degradation).softmax(dim=-1) * self.prompt)


class _Level(nn.Module):
    """One U-Net level: residual blocks, then attention, then a resampling conv."""

    def __init__(self, blocks: list[nn.Module], attn: nn.Module, resample: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attn = attn
        self.resample = resample


class ConditionalUNet(nn.Module):
    """Noise predictor ``forward(x_t, lq, t, degradation, content) -> noise`` for any HxW.

    ``t`` holds one timestep per sample (float or integer, shape (B,) or a scalar);
    ``degradation`` and ``content`` are the DA-CLIP embeddings, shape (B, context_dim).
    Inputs are padded (reflect, or replicate when too small to reflect) to a multiple of
    :attr:`size_multiple` and the output is cropped back.
    """

    def __init__(self, config: ConditionalUNetConfig | None = None) -> None:
        super().__init__()
        cfg = config or ConditionalUNetConfig()
        cfg.validate()
        self.config = cfg
        nf, time_dim, depth = cfg.nf, cfg.time_dim, len(cfg.ch_mult)
        mults = [1, *cfg.ch_mult]

        self.init_conv = _conv(2 * cfg.in_channels, nf, 7)
        self.time_mlp = nn.Sequential(
            SinusoidalTimeEmbedding(nf), nn.Linear(nf, time_dim), nn.GELU(),
            nn.Linear(time_dim, time_dim),
        )
        self.prompt = PromptModule(cfg.context_dim, cfg.prompt_dim, time_dim)

        def attention(dim: int, cross: bool) -> nn.Module:
            if cross:
                heads, head_dim = cfg.heads_for(dim)
                return CrossAttentionBlock(
                    dim, heads, head_dim, cfg.context_dim, cfg.transformer_depth,
                    cfg.zero_init_attention,
                )
            return LinearAttention(dim, cfg.linear_attn_heads, cfg.linear_attn_head_dim)

        self.downs = nn.ModuleList()
        self.ups = nn.ModuleList()
        for i in range(depth):
            dim_in, dim_out = nf * mults[i], nf * mults[i + 1]
            deepest = i == depth - 1
            # The deepest level keeps its resolution; the others halve it (4x4 stride-2 conv).
            down = _conv(dim_in, dim_out) if deepest else nn.Conv2d(dim_in, dim_out, 4, 2, 1)
            self.downs.append(_Level(
                [ResBlock(dim_in, dim_in, time_dim) for _ in range(cfg.res_blocks)],
                attention(dim_in, deepest), down,
            ))
            up = (
                _conv(dim_out, dim_in) if i == 0
                else nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                   nn.Conv2d(dim_out, dim_in, 3, padding=1))
            )
            # Every decoder block consumes one skip (dim_in channels) of the mirrored level.
            self.ups.insert(0, _Level(
                [ResBlock(dim_out + dim_in, dim_out, time_dim) for _ in range(cfg.res_blocks)],
                attention(dim_out, deepest), up,
            ))
        mid = nf * mults[-1]
        self.mid_block1 = ResBlock(mid, mid, time_dim)
        self.mid_attn = attention(mid, True)
        self.mid_block2 = ResBlock(mid, mid, time_dim)
        self.final_res_block = ResBlock(2 * nf, nf, time_dim)
        self.final_conv = nn.Conv2d(nf, cfg.in_channels, 3, padding=1)

    @property
    def size_multiple(self) -> int:
        """Input sides are padded to this: one halving per level but the deepest."""
        return 2 ** (len(self.config.ch_mult) - 1)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.size_multiple
        pad_h, pad_w = (-h) % m, (-w) % m
        if not (pad_h or pad_w):
            return x
        # Reflect needs the pad to be smaller than the side; replicate works for any size.
        mode = "reflect" if pad_h < h and pad_w < w else "replicate"
        return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)

    def forward(
        self, x_t: torch.Tensor, lq: torch.Tensor, t: torch.Tensor | float,
        degradation: torch.Tensor, content: torch.Tensor,
    ) -> torch.Tensor:
        batch = x_t.shape[0]
        h, w = x_t.shape[-2:]
        t = torch.as_tensor(t, device=x_t.device).float().reshape(-1)
        if t.numel() == 1:
            t = t.expand(batch)
        time_emb = self.time_mlp(t) + self.prompt(degradation)
        context = content[:, None, :]  # one content token per image

        x = self.init_conv(self._pad(torch.cat([x_t - lq, lq], dim=1)))
        first = x
        skips = []
        for level in self.downs:
            for j, block in enumerate(level.blocks):
                x = block(x, time_emb)
                if j == len(level.blocks) - 1:
                    x = self._attend(level.attn, x, context)
                skips.append(x)
            x = level.resample(x)

        x = self.mid_block1(x, time_emb)
        x = self._attend(self.mid_attn, x, context)
        x = self.mid_block2(x, time_emb)

        for level in self.ups:
            for block in level.blocks:
                x = block(torch.cat([x, skips.pop()], dim=1), time_emb)
            x = self._attend(level.attn, x, context)
            x = level.resample(x)

        x = self.final_res_block(torch.cat([x, first], dim=1), time_emb)
        return self.final_conv(x)[..., :h, :w]

    @staticmethod
    def _attend(attn: nn.Module, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return attn(x, context) if isinstance(attn, CrossAttentionBlock) else attn(x)
