"""Tile-by-tile restoration with overlap, so any image size fits in bounded memory.

Tiles overlap by at least ``overlap`` pixels and are blended with linear-ramp weights (each
pixel's result is a weighted average of the tiles covering it), which hides seams. Each
tile's outer ``overlap // 4`` pixels at interior edges get zero weight, so a model whose
receptive-field radius is at most that gives the full-image result; a pointwise model gives
it exactly. Tile origins are aligned to the model's ``size_multiple`` (if it has one)
so every tile sees the same down-sampling grid as the full image.
"""

from __future__ import annotations

import torch
from torch import nn


def _starts(length: int, tile: int, overlap: int, align: int) -> list[int]:
    """Aligned tile origins along one axis covering ``[0, length)`` with >= ``overlap``.

    The stride is a multiple of ``align``; the last tile starts at an aligned position and
    runs to ``length``, so it may be up to ``align - 1`` pixels longer than ``tile``.
    """
    if length <= tile:
        return [0]
    stride = max(align, (tile - overlap) // align * align)
    last = (length - tile) // align * align
    starts = list(range(0, last, stride))
    return [*starts, last]


def _axis_weight(start: int, end: int, length: int, overlap: int) -> torch.Tensor:
    """1-D blending weight of a tile spanning ``[start, end)`` of an axis of ``length``.

    At an edge inside the image the weight is 0 over the outer ``overlap // 4`` pixels (where
    the tile's border corrupts a model's output), then ramps linearly to 1 over the middle of
    the overlap; at an image border it stays 1. Neighbouring ramps mirror each other, so the
    weights covering a pixel never all vanish.
    """
    n = end - start
    d = torch.arange(n, dtype=torch.float32)
    margin = overlap // 4
    ramp = overlap - 2 * margin
    w = torch.ones(n)
    if start > 0:
        w = torch.minimum(w, ((d - margin + 1) / (ramp + 1)).clamp(0.0, 1.0))
    if end < length:
        w = torch.minimum(w, ((n - 1 - d - margin + 1) / (ramp + 1)).clamp(0.0, 1.0))
    # A floor keeps the division safe in degenerate layouts; its contamination is <= 1e-12.
    return w.clamp_min(1e-12)


def restore_tiled(
    model: nn.Module, image: torch.Tensor, tile: int = 512, overlap: int = 32
) -> torch.Tensor:
    """Restore ``image`` (N,C,H,W float in [0,1]) tile by tile; returns it clamped to [0,1].

    Runs under ``torch.inference_mode`` with the model in eval mode (its previous mode is
    restored). Tiles run on the model's device; the result is on the image's device.
    """
    if image.ndim != 4:
        raise ValueError(f"expected an (N,C,H,W) image, got shape {tuple(image.shape)}")
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got {tile=}, {overlap=}")
    align = int(getattr(model, "size_multiple", 1))
    param = next(model.parameters(), None)
    device = param.device if param is not None else image.device
    _, _, h, w = image.shape
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = torch.zeros_like(image, dtype=torch.float32)
            weight = torch.zeros((1, 1, h, w), dtype=torch.float32, device=image.device)
            ys = _starts(h, tile, overlap, align)
            xs = _starts(w, tile, overlap, align)
            for iy, y0 in enumerate(ys):
                y1 = h if iy == len(ys) - 1 else min(y0 + tile, h)
                for ix, x0 in enumerate(xs):
                    x1 = w if ix == len(xs) - 1 else min(x0 + tile, w)
                    patch = image[..., y0:y1, x0:x1].to(device)
                    pred = model(patch).float().to(image.device)
                    wy = _axis_weight(y0, y1, h, overlap)
                    wx = _axis_weight(x0, x1, w, overlap)
                    wgt = wy[:, None] * wx[None, :]
                    wgt = wgt.to(image.device)
                    out[..., y0:y1, x0:x1] += pred * wgt
                    weight[..., y0:y1, x0:x1] += wgt
            return (out / weight).clamp_(0.0, 1.0)
    finally:
        model.train(was_training)
