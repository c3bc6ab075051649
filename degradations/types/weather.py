"""Rain streaks, lens raindrops and falling snow as prompt-addressable degradation types.

DA-CLIP takes these from real paired sets (Rain100H, Qian et al.'s raindrops, Snow100K); here
they are rendered so that every pair can be synthesised and replayed. Albumentations 2.0.8 was
tried and fits none of them: RandomRain fixes the streak count by preset (not by a density),
draws every streak with one length and darkens the whole frame; RandomSnow only bleaches or
tints (no flakes); Spatter's "rain" looks like mud spots, not out-of-focus lens drops; and all
three round the image to uint8 inside. The renderers below are OpenCV/numpy on float32.

Density is the visible number; geometry (lengths, sizes, angles) and the seed for positions
are hidden but recorded, and scale with the scene so a 256 and a 512 photo look alike; a crop
of a photo (``scene_side`` of the typed pipelines) gets the photo's geometry, not geometry
shrunk to the crop: on 64 px crops of 512 px photos that would be 4 px streaks and 1.5 px drops.
Objects are drawn from one ``rng.random((n, k))`` call, so a higher density with the same seed
adds objects to the same ones: the degradation grows monotonically with density.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from degradations.names import Degradation
from degradations.registry import NumericParam, register_degradation
from degradations.seeding import draw_seed, generator

REFERENCE_SIDE = 512  # hidden sizes are drawn for this short side and scaled to the image
STREAKS_PER_PIXEL = 1 / 150  # rain streaks per pixel of (padded) area at density 1
FLAKES_PER_PIXEL = 1 / 70  # snow flakes per pixel at density 1
_STREAK_DEPTHS = (0.35, 0.65, 1.0)  # relative brightness and length of far, middle, near rain
_SUBPIXEL_BITS = 4  # fixed-point bits for OpenCV line end points: smooth anti-aliased streaks
_BORDER = cv2.BORDER_REFLECT_101


def _scale(shape: tuple[int, int]) -> float:
    return min(shape) / REFERENCE_SIDE


def _density(doc: str, high: float = 0.8) -> NumericParam:
    return NumericParam("density", 0.1, high, 2, minimum=0.0, maximum=1.0, doc=doc)


def tent_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Blur with OpenCV's stack blur, whose cost does not grow with the radius.

    Its kernel is a tent of radius r, variance r(r + 2)/6, so r is chosen to match ``sigma``:
    a Gaussian blur at sigma 6 costs 4x more, and large blurs are what drops and shadows need.
    """
    radius = max(1, round(math.sqrt(6 * sigma**2 + 1) - 1))
    return cv2.stackBlur(image, (2 * radius + 1, 2 * radius + 1))


def rgb(plane: np.ndarray) -> np.ndarray:
    """A single-channel plane as HxWx3: numpy broadcasting over a last axis of 3 is ~10x slower."""
    return cv2.merge([plane, plane, plane])


def _screen(image: np.ndarray, layer: np.ndarray) -> np.ndarray:
    """Light added by a semi-transparent bright layer: 1 - (1 - I)(1 - a); never darkens.

    In place on one new array: fresh full-size temporaries cost page faults at this size.
    """
    out = 1 - image
    out *= rgb(1 - layer)
    return np.subtract(1, out, out=out)


def _rain_hidden(rng: np.random.Generator, shape: tuple[int, int]) -> dict[str, Any]:
    scale = _scale(shape)
    return {
        "length": max(2, round(rng.uniform(20, 50) * scale)),
        "width": max(1, round(rng.uniform(1, 2.5) * scale)),
        "angle": round(float(rng.uniform(-25, 25)), 1),
        "brightness": round(float(rng.uniform(0.5, 0.9)), 2),
        "seed": draw_seed(rng),
    }


@register_degradation(
    Degradation.RAINY,
    params=(_density(f"streaks per pixel area / {STREAKS_PER_PIXEL:.5f}"),),
    verb="Derain",
    template="Derain with density {density}",
    order=3,
    hidden=_rain_hidden,
    scene_geometry=True,
)
def rainy(
    image: np.ndarray,
    density: float,
    length: int,
    width: int,
    angle: float,
    brightness: float,
    seed: int,
) -> np.ndarray:
    """Anti-aliased rain streaks screened onto the image, in three depth layers.

    ``length`` and ``brightness`` are those of the nearest streaks; farther ones are shorter
    and dimmer, so streaks are not uniform bars. ``angle`` is the slant from vertical in
    degrees (positive leans to the right going down).
    """
    height, width_px = image.shape[:2]
    pad = length  # streaks may start above or beside the frame so coverage is uniform
    area = (width_px + 2 * pad) * (height + pad)
    count = round(density * area * STREAKS_PER_PIXEL)
    if count == 0:
        return image.copy()
    draws = generator(seed).random((count, 4))
    starts = draws[:, :2] * (width_px + 2 * pad, height + pad) - (pad, pad)
    depth = np.minimum((draws[:, 2] * len(_STREAK_DEPTHS)).astype(np.intp), len(_STREAK_DEPTHS) - 1)
    near = np.asarray(_STREAK_DEPTHS)[depth]
    lengths = length * near * (0.7 + 0.3 * draws[:, 3])
    radians = math.radians(angle)
    ends = starts + lengths[:, None] * (math.sin(radians), math.cos(radians))
    lines = np.rint(np.stack([starts, ends], axis=1) * (1 << _SUBPIXEL_BITS)).astype(np.int32)
    layer = np.zeros((height, width_px), np.uint8)
    for level, factor in enumerate(_STREAK_DEPTHS):  # far first, so near streaks stay on top
        colour = round(255 * factor)
        chosen = lines[depth == level]
        cv2.polylines(layer, chosen, False, colour, width, cv2.LINE_AA, _SUBPIXEL_BITS)
    streaks = layer.astype(np.float32) * np.float32(brightness / 255)
    streaks = cv2.GaussianBlur(streaks, (0, 0), 0.4 + 0.3 * width, borderType=_BORDER)
    return _screen(image, streaks)


def _raindrop_hidden(rng: np.random.Generator, shape: tuple[int, int]) -> dict[str, Any]:
    scale = _scale(shape)
    return {
        "radius": round(max(1.5, rng.uniform(8, 22) * scale), 2),  # a floor for tiny images
        "defocus": round(max(0.5, rng.uniform(2.0, 6.0) * scale), 2),
        "magnification": round(float(rng.uniform(1.5, 3.0)), 2),
        "seed": draw_seed(rng),
    }


@register_degradation(
    Degradation.RAINDROP,
    params=(_density("drop area per image area (drops overlap: coverage is less)", 0.5),),
    verb="Remove raindrops",
    template="Remove raindrops with density {density}",
    order=5,
    hidden=_raindrop_hidden,
    scene_geometry=True,
)
def raindrop(
    image: np.ndarray,
    density: float,
    radius: float,
    defocus: float,
    magnification: float,
    seed: int,
) -> np.ndarray:
    """Water drops on the lens: out-of-focus discs that show an inverted, shrunk view.

    Each drop acts as a small lens: a pixel at offset d from the drop centre shows the scene at
    -magnification * d, taken from a defocused copy, because the camera focuses past the glass.
    """
    height, width = image.shape[:2]
    count = round(density * height * width / (math.pi * radius**2))
    if count == 0:
        return image.copy()
    draws = generator(seed).random((count, 5))
    centres = draws[:, :2] * (width, height)
    radii = radius * (0.5 + draws[:, 2])  # mean radius = ``radius``
    aspects = 0.75 + 0.25 * draws[:, 3]  # drops sag: slightly wider than tall
    axes = np.maximum(1, np.rint(np.stack([radii, radii * aspects], axis=1))).astype(int)
    tilts = 40 * draws[:, 4] - 20
    labels = np.zeros((height, width), np.int32)
    shapes = zip(np.rint(centres).astype(int).tolist(), axes.tolist(), tilts.tolist(), strict=True)
    for index, (centre, size, tilt) in enumerate(shapes, start=1):
        cv2.ellipse(labels, centre, size, tilt, 0, 360, index, -1)  # later drops cover earlier
    gain = np.concatenate([[0.0], np.full(count, 1 + magnification)]).astype(np.float32)
    centre_x = np.concatenate([[0.0], centres[:, 0]]).astype(np.float32)
    centre_y = np.concatenate([[0.0], centres[:, 1]]).astype(np.float32)
    grid_y, grid_x = np.indices((height, width), dtype=np.float32)
    pull = gain[labels]
    map_x = centre_x[labels] - grid_x
    map_x *= pull
    map_x += grid_x
    map_y = centre_y[labels] - grid_y
    map_y *= pull
    map_y += grid_y
    blurred = tent_blur(image, defocus)
    out = cv2.remap(blurred, map_x, map_y, cv2.INTER_LINEAR, borderMode=_BORDER)
    inside = (labels > 0).astype(np.float32)
    alpha = tent_blur(inside, 0.1 * radius + 0.4 * defocus)
    # Total internal reflection darkens a drop's rim; its body gathers a little extra light.
    rim = np.clip(4 * alpha * (1 - alpha), 0, 1)
    out *= rgb(1.08 - 0.35 * rim)
    out -= image  # out = image + alpha * (drop - image), in place
    out *= rgb(alpha)
    out += image
    return np.clip(out, 0, 1, out=out)  # the brighter drop bodies may pass 1


def _snow_hidden(rng: np.random.Generator, shape: tuple[int, int]) -> dict[str, Any]:
    scale = _scale(shape)
    return {
        "size": round(max(0.5, rng.uniform(1.0, 2.2) * scale), 2),
        "angle": round(float(rng.uniform(-30, 30)), 1),
        "motion": round(float(rng.uniform(0, 6) * scale), 2),
        "opacity": round(float(rng.uniform(0.7, 1.0)), 2),
        "veil": round(float(rng.uniform(0.0, 0.25)), 2),
        "seed": draw_seed(rng),
    }


# Flake classes by share of all flakes: (cumulative share, radius / size, opacity). Few large
# near flakes, many small far ones, as in Snow100K.
_FLAKE_CLASSES = ((0.65, 0.6, 0.8), (0.92, 1.0, 0.9), (1.0, 2.2, 0.7))


def _line_kernel(length: float, angle: float) -> np.ndarray:
    """Normalised motion-blur kernel along a direction ``angle`` degrees from vertical."""
    size = 2 * math.ceil(length / 2) + 1
    kernel = np.zeros((size, size), np.float32)
    radians = math.radians(angle)
    half = length / 2
    centre = size // 2
    dx, dy = half * math.sin(radians), half * math.cos(radians)
    unit = 1 << _SUBPIXEL_BITS
    start = (round((centre - dx) * unit), round((centre - dy) * unit))
    end = (round((centre + dx) * unit), round((centre + dy) * unit))
    cv2.line(kernel, start, end, 1.0, 1, cv2.LINE_8, _SUBPIXEL_BITS)
    return kernel / kernel.sum()


@register_degradation(
    Degradation.SNOWY,
    params=(_density(f"flakes per pixel area / {FLAKES_PER_PIXEL:.5f}"),),
    verb="Desnow",
    template="Desnow with density {density}",
    order=4,
    hidden=_snow_hidden,
    scene_geometry=True,
)
def snowy(
    image: np.ndarray,
    density: float,
    size: float,
    angle: float,
    motion: float,
    opacity: float,
    veil: float,
    seed: int,
) -> np.ndarray:
    """Soft snow flakes in three size classes, motion-blurred along the fall direction, and
    a white veil that thickens with density (falling snow scatters light like thin fog).
    """
    height, width = image.shape[:2]
    count = round(density * height * width * FLAKES_PER_PIXEL)
    draws = generator(seed).random((count, 3))
    xs = np.minimum((draws[:, 0] * width).astype(np.intp), width - 1)
    ys = np.minimum((draws[:, 1] * height).astype(np.intp), height - 1)
    clear = np.ones((height, width), np.float32)
    lower = 0.0
    for upper, relative, strength in _FLAKE_CLASSES:
        chosen = (draws[:, 2] >= lower) & (draws[:, 2] < upper)
        lower = upper
        plane = np.zeros((height, width), np.float32)
        plane[ys[chosen], xs[chosen]] = 1.0
        sigma = relative * size
        ksize = 2 * math.ceil(3 * sigma) + 1
        peak = float(cv2.getGaussianKernel(ksize, sigma)[ksize // 2, 0]) ** 2
        blob = cv2.GaussianBlur(plane, (ksize, ksize), sigma, borderType=_BORDER)
        # A Gaussian scaled to twice its peak, then clipped: a flat-topped disc, soft edge.
        clear *= 1 - np.minimum(blob * np.float32(2 * strength / peak), strength)
    flakes = 1 - clear
    if motion >= 1:
        flakes = cv2.filter2D(flakes, -1, _line_kernel(motion, angle), borderType=_BORDER)
    # Veil, then flakes, both screened: 1 - (1 - I)(1 - veil)(1 - a) is one pass over RGB.
    passed = (1 - flakes * np.float32(opacity)) * np.float32(1 - veil * density)
    return _screen(image, 1 - passed)
