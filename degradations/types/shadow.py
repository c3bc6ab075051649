"""Cast shadows as a prompt-addressable degradation type (DA-CLIP's "shadowed", SRD-like).

Albumentations' RandomShadow was tried and not used: its polygons join random points (so they
self-intersect into spiky shapes), their edges are hard, the darkening is grey and the image is
rounded to uint8 inside. SRD shadows have a soft penumbra and a blue cast, because the region
keeps the skylight while losing the direct (warmer) sunlight; that is what is rendered here.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from degradations.names import Degradation
from degradations.registry import NumericParam, register_degradation
from degradations.seeding import draw_seed, generator
from degradations.types.weather import tent_blur

_SUBPIXEL_BITS = 4
_STRENGTH = "share of the light removed in the umbra (red channel)"


def _shadow_hidden(rng: np.random.Generator, shape: tuple[int, int]) -> dict[str, Any]:
    return {
        "softness": round(float(rng.uniform(0.005, 0.03) * min(shape)), 2),
        "tint": round(float(rng.uniform(0.0, 0.3)), 2),
        "seed": draw_seed(rng),
    }


def shadow_mask(shape: tuple[int, int], softness: float, seed: int) -> np.ndarray:
    """One or two star-shaped, elongated occluder silhouettes with a blurred penumbra.

    Star-shaped polygons (vertices sorted by angle around a centre) never self-intersect, and
    each centre lies inside the frame, so the mask is never empty.
    """
    height, width = shape
    rng = generator(seed)
    mask = np.zeros(shape, np.uint8)
    for _ in range(int(rng.integers(1, 3))):
        vertices = int(rng.integers(5, 11))
        angles = np.sort(rng.uniform(0, 2 * math.pi, vertices))
        radii = rng.uniform(0.25, 0.6) * min(shape) * rng.uniform(0.4, 1.0, vertices)
        stretch = rng.uniform(1.0, 2.5)  # cast shadows are longer than their occluders
        turn = rng.uniform(0, math.pi)
        x = radii * np.cos(angles) * stretch
        y = radii * np.sin(angles)
        rotated = np.stack(
            [x * math.cos(turn) - y * math.sin(turn), x * math.sin(turn) + y * math.cos(turn)],
            axis=1,
        )
        centre = rng.uniform((0, 0), (width, height))
        points = np.rint((rotated + centre) * (1 << _SUBPIXEL_BITS)).astype(np.int32)
        cv2.fillPoly(mask, [points], 255, cv2.LINE_AA, _SUBPIXEL_BITS)
    soft = mask.astype(np.float32) * np.float32(1 / 255)
    if softness > 0:
        soft = tent_blur(soft, softness)
    return np.clip(soft, 0, 1, out=soft)  # the stack blur may overshoot 1 by rounding


@register_degradation(
    Degradation.SHADOWED,
    params=(NumericParam("strength", 0.3, 0.8, 2, minimum=0.0, maximum=1.0, doc=_STRENGTH),),
    verb="Deshadow",
    template="Deshadow with strength {strength}",
    order=1,
    hidden=_shadow_hidden,
)
def shadowed(
    image: np.ndarray, strength: float, softness: float, tint: float, seed: int
) -> np.ndarray:
    """Darken a soft-edged region; blue loses ``tint`` less than red (skylight remains)."""
    mask = shadow_mask(image.shape[:2], softness, seed)
    losses = (strength, strength * (1 - tint / 2), strength * (1 - tint))
    # cv2.merge of planes: numpy broadcasting over a last axis of 3 is ~8x slower.
    light = cv2.merge([1 - mask * np.float32(loss) for loss in losses])
    light *= image
    return light
