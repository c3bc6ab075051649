"""Inpainting holes: irregular free-form brush strokes (DeepFill v2 / LaMa style) and boxes.

DA-CLIP fills holes white; the fill is a parameter because black holes are the other common
convention. The hole area is the prompt's number, so shapes are added until the mask covers
the requested percentage (within ``AREA_TOLERANCE``); a shape that would overshoot is drawn
again smaller. Every shape comes from the recorded seed, so the mask replays bit-exactly.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from degradations.names import Degradation
from degradations.registry import NumericParam, register_degradation
from degradations.seeding import generator, seed_only

AREA_TOLERANCE = 2.0  # percentage points above the requested area
_MAX_SHAPES = 20_000
_SHRINK = 0.7  # shape scale after an overshoot
# Sizes as fractions of sqrt(height * width), so masks look alike at any resolution.
_WIDTH = (0.02, 0.07)
_STEP = (0.05, 0.15)
_VERTICES = (4, 12)
_BOX_SIDE = (0.1, 0.3)


def _stroke(canvas: np.ndarray, rng: np.random.Generator, size: float) -> None:
    """A random-walk polyline with a random brush width and round joints."""
    height, width = canvas.shape
    thickness = max(1, round(rng.uniform(*_WIDTH) * size))
    x, y = rng.uniform(0, width), rng.uniform(0, height)
    angle = rng.uniform(0, 2 * math.pi)
    start = (round(x), round(y))
    cv2.circle(canvas, start, thickness // 2, 1, -1)
    for _ in range(int(rng.integers(_VERTICES[0], _VERTICES[1] + 1))):
        angle += rng.normal(0.0, 0.6)
        step = max(1.0, rng.uniform(*_STEP) * size)
        x = min(max(x + step * math.cos(angle), 0.0), width - 1.0)
        y = min(max(y + step * math.sin(angle), 0.0), height - 1.0)
        end = (round(x), round(y))
        cv2.line(canvas, start, end, 1, thickness)
        cv2.circle(canvas, end, thickness // 2, 1, -1)
        start = end


def _box(canvas: np.ndarray, rng: np.random.Generator, size: float) -> None:
    height, width = canvas.shape
    box_w = max(1, round(rng.uniform(*_BOX_SIDE) * size))
    box_h = max(1, round(rng.uniform(*_BOX_SIDE) * size))
    left, top = int(rng.integers(0, width)), int(rng.integers(0, height))
    cv2.rectangle(canvas, (left, top), (left + box_w - 1, top + box_h - 1), 1, -1)


def hole_mask(shape: tuple[int, int], area: float, seed: int, box_prob: float) -> np.ndarray:
    """uint8 HxW mask (1 = hole) covering area% to area% + AREA_TOLERANCE of the image."""
    height, width = shape
    total = height * width
    target = area / 100 * total
    limit = (area + AREA_TOLERANCE) / 100 * total
    if math.ceil(target) > limit:
        raise ValueError(f"a {height}x{width} image has no pixel count within {area}% to "
                         f"{area + AREA_TOLERANCE}%")
    rng = generator(seed)
    side = math.sqrt(total)
    scale = 1.0
    mask = np.zeros(shape, dtype=np.uint8)
    covered = 0
    for _ in range(_MAX_SHAPES):
        if covered >= target:
            return mask
        candidate = mask.copy()
        draw = _box if rng.random() < box_prob else _stroke
        draw(candidate, rng, side * scale)
        count = cv2.countNonZero(candidate)
        if count <= limit:
            mask, covered = candidate, count
        else:
            scale = max(scale * _SHRINK, 1 / side)
    raise ValueError(f"could not cover {area}% of a {height}x{width} image within tolerance")


@register_degradation(
    Degradation.UNCOMPLETED,
    params=(NumericParam("area", 5, 30, 0, minimum=1, maximum=90, doc="percent of pixels"),),
    verb="Inpaint",
    template="Inpaint {area}% area",
    order=50,
    hidden=seed_only,
    outputs=("mask",),
)
def uncompleted(
    image: np.ndarray, area: int, seed: int, fill: float = 1.0, box_prob: float = 0.15
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Holes filled with ``fill`` (1 = white as DA-CLIP, 0 = black); returns the mask too."""
    if not 0.0 <= fill <= 1.0:
        raise ValueError(f"fill must be in [0, 1], got {fill}")
    mask = hole_mask(image.shape[:2], area, seed, box_prob)
    out = image.copy()
    out[mask.astype(bool)] = np.float32(fill)
    return out, {"mask": mask}
