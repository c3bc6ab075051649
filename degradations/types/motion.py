"""Camera-shake motion blur: a linear or curved trajectory kernel, not a Gaussian.

DA-CLIP's blurry data is GoPro, whose blur comes from camera and object motion along a
path, so the kernel is a thin (anti-aliased) curve. The trajectory is a quadratic Bezier
whose bend is recorded: bend 0 is a straight line, as in DeblurGAN's linear kernels; a bend
gives the arcs of Boracchi & Foi's trajectories without recording a random walk.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import cv2
import numpy as np

from degradations.names import Degradation
from degradations.registry import NumericParam, register_degradation

_BORDER = cv2.BORDER_REFLECT_101  # the reflect padding of primitives.apply_kernel
_SAMPLES_PER_PIXEL = 4  # points per pixel of path length: a gap-free, anti-aliased stroke
_CURVED_PROB = 0.5
_BEND_RANGE = (0.1, 0.5)


def _trajectory(length: float, angle: float, bend: float) -> np.ndarray:
    """(N, 2) x/y points equally spaced along the path, centred on their centroid.

    The chord has ``length`` pixels at ``angle`` degrees counter-clockwise from the x axis
    (y points down in images, hence the minus sign); the Bezier control point sits
    ``bend * length`` off the chord's midpoint, perpendicular to it. Centring on the
    centroid keeps the blurred image aligned with the sharp one.
    """
    theta = math.radians(angle)
    along = np.array([math.cos(theta), -math.sin(theta)])
    across = np.array([math.sin(theta), math.cos(theta)])
    start, control, end = -0.5 * length * along, bend * length * across, 0.5 * length * along
    # Dense in the curve parameter, then resampled to equal arc-length steps (constant speed).
    t = np.linspace(0.0, 1.0, 8 * _SAMPLES_PER_PIXEL * (math.ceil(length) + 1))[:, None]
    dense = (1 - t) ** 2 * start + 2 * t * (1 - t) * control + t**2 * end
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(dense, axis=0).T))])
    count = max(2, math.ceil(arc[-1] * _SAMPLES_PER_PIXEL) + 1)
    steps = np.linspace(0.0, arc[-1], count)
    points = np.stack([np.interp(steps, arc, dense[:, 0]), np.interp(steps, arc, dense[:, 1])], 1)
    return points - points.mean(axis=0)


@lru_cache(maxsize=1024)
def motion_kernel(length: float, angle: float, bend: float) -> np.ndarray:
    """A normalised float32 kernel: the path's points splatted bilinearly (sub-pixel exact).

    Bilinear splatting preserves each point's mass and centre of mass, so the kernel's
    centroid is exactly its centre pixel and thin lines at any angle have no jaggies.
    """
    points = _trajectory(length, angle, bend)
    radius = math.ceil(np.abs(points).max()) + 1
    size = 2 * radius + 1
    coords = points + radius
    base = np.floor(coords).astype(np.intp)
    frac = coords - base
    kernel = np.zeros((size, size), dtype=np.float64)
    for dy in (0, 1):
        for dx in (0, 1):
            weight = (frac[:, 0] if dx else 1 - frac[:, 0]) * (frac[:, 1] if dy else 1 - frac[:, 1])
            np.add.at(kernel, (base[:, 1] + dy, base[:, 0] + dx), weight)
    kernel = (kernel / kernel.sum()).astype(np.float32)
    kernel.setflags(write=False)  # shared by the cache
    return kernel


def _curve(rng: np.random.Generator, shape: tuple[int, int]) -> dict[str, Any]:
    """Half the kernels are straight; the rest bend either way by 10-50% of their length."""
    if rng.random() >= _CURVED_PROB:
        return {"bend": 0.0}
    return {"bend": round(float(rng.choice([-1, 1]) * rng.uniform(*_BEND_RANGE)), 3)}


@register_degradation(
    Degradation.MOTION_BLURRY,
    params=(
        NumericParam("length", 5, 25, 0, minimum=1, maximum=101, doc="chord, pixels"),
        NumericParam(
            "angle", 0, 180, 0, minimum=-360, maximum=360, doc="degrees counter-clockwise"
        ),
    ),
    verb="Remove motion blur",
    template="Remove motion blur of length {length} at angle {angle}",
    order=8,
    hidden=_curve,
)
def motion_blurry(image: np.ndarray, length: int, angle: int, bend: float) -> np.ndarray:
    """Motion blur along a straight (bend 0) or bent path; length is the chord in pixels."""
    kernel = motion_kernel(float(length), float(angle), float(bend))
    image = image if image.flags.c_contiguous else np.ascontiguousarray(image)
    return cv2.filter2D(image, -1, kernel, borderType=_BORDER)
