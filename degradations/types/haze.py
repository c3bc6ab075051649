"""Haze by the atmospheric scattering model (Koschmieder's law), as RESIDE synthesises it.

I = J t + A (1 - t) with transmission t = exp(-beta d): the scene J fades towards the
airlight A with depth d. beta (the prompt's "density") sets how fast. The depth comes from
the image's ``depth`` side input (a ``.depth.png`` sidecar, 1 = farthest) when there is one;
otherwise from a prior, since haze without depth structure looks like a flat veil.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from degradations.names import Degradation
from degradations.registry import NumericParam, register_degradation

DEPTH_SOURCES = ("auto",)
_PRIOR_SIDE = 32  # the prior works on a thumbnail: resolution-independent and cheap
_PRIOR_BLUR_SIGMA = 1.5  # thumbnail pixels


def depth_prior(image: np.ndarray, mix: float) -> np.ndarray:
    """Relative depth in [0, 1] guessed from a clean image (1 = farthest).

    Computed on a thumbnail and upsampled: depth varies slowly, and the channel minimum
    over a full 512x512 image alone would cost more than the rest of the op.

    ``mix`` weights a vertical gradient (outdoor scenes recede towards the top) against a
    smoothed dark channel: in haze-free images it is near zero except on sky and distant,
    bright, unsaturated regions (He et al.'s dark channel prior), so high means far.
    """
    height, width = image.shape[:2]
    scale = _PRIOR_SIDE / max(height, width)
    small_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    thumbnail = cv2.resize(image, small_size, interpolation=cv2.INTER_AREA)
    dark = np.ascontiguousarray(thumbnail.min(axis=2))
    dark = cv2.erode(dark, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    dark = cv2.GaussianBlur(dark, (0, 0), _PRIOR_BLUR_SIGMA, borderType=cv2.BORDER_REFLECT_101)
    dark = cv2.resize(dark, (width, height), interpolation=cv2.INTER_LINEAR)
    low, high = float(dark.min()), float(dark.max())
    dark = (dark - np.float32(low)) * np.float32(1 / max(high - low, 1e-6))
    vertical = np.linspace(1.0, 0.0, height, dtype=np.float32)[:, None]
    return np.float32(mix) * vertical + np.float32(1 - mix) * dark


def _depth_input(depth: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A sidecar depth map as float32 HxW in [0, 1], resized to the image if needed."""
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2:
        raise ValueError(f"depth must be an HxW map, got shape {depth.shape}")
    if depth.shape != shape:
        depth = cv2.resize(depth, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return np.clip(depth, 0.0, 1.0)


def _atmosphere(rng: np.random.Generator, shape: tuple[int, int]) -> dict[str, Any]:
    """A bright grey airlight, slightly tinted per channel, and the depth prior's mix."""
    grey = rng.uniform(0.7, 1.0)
    tint = rng.uniform(-0.03, 0.03, size=3)
    return {
        "airlight": [round(float(np.clip(grey + t, 0.0, 1.0)), 3) for t in tint],
        "depth_source": "auto",
        "depth_mix": round(float(rng.uniform(0.4, 0.8)), 2),
    }


@register_degradation(
    Degradation.HAZY,
    params=(NumericParam("density", 0.5, 2.5, 2, minimum=0.0, maximum=10.0, doc="beta"),),
    verb="Dehaze",
    template="Dehaze with density {density}",
    order=2,
    hidden=_atmosphere,
    inputs=("depth",),
)
def hazy(
    image: np.ndarray,
    density: float,
    airlight: list[float],
    depth_source: str,
    depth_mix: float,
    depth: np.ndarray | None = None,
) -> np.ndarray:
    """Koschmieder haze; ``depth_source`` "auto" = the depth input if given, else the prior.

    Whether a depth input was used is in the record's ``inputs``, which replay enforces.
    """
    if depth_source not in DEPTH_SOURCES:
        raise ValueError(f"depth_source must be one of {DEPTH_SOURCES}, got {depth_source!r}")
    shape = image.shape[:2]
    distance = depth_prior(image, depth_mix) if depth is None else _depth_input(depth, shape)
    transmission = np.exp(np.float32(-density) * distance)[..., None]
    light = np.asarray(airlight, dtype=np.float32)
    out = image - light
    out *= transmission
    out += light
    return out
