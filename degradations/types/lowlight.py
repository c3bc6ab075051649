"""Low light by Lv et al.'s synthesis (IJCV 2021): I = beta * (alpha * J)^gamma + noise.

gamma darkens the mid-tones non-linearly (higher gamma = darker), alpha and beta scale the
exposure; real dark captures are photon-starved, so signal-dependent noise follows. The
noise is the Poisson-Gaussian model (Foi et al. 2008) in its normal approximation,
variance = signal / photons + read_noise^2: an exact Poisson draw costs ~60 ms at 512x512,
and at these photon counts the two are indistinguishable.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from degradations.names import Degradation
from degradations.registry import NumericParam, register_degradation
from degradations.seeding import draw_seed, generator

_PHOTONS = (80.0, 800.0)  # photons at full scale, drawn log-uniformly
_READ_NOISE = (0.002, 0.01)  # 0-1 scale


def _exposure(rng: np.random.Generator, shape: tuple[int, int]) -> dict[str, Any]:
    """Lv et al.'s alpha ~ U(0.9, 1), beta ~ U(0.5, 1); noise levels and the noise seed."""
    log_low, log_high = math.log(_PHOTONS[0]), math.log(_PHOTONS[1])
    return {
        "alpha": round(float(rng.uniform(0.9, 1.0)), 3),
        "beta": round(float(rng.uniform(0.5, 1.0)), 3),
        "photons": round(math.exp(rng.uniform(log_low, log_high)), 1),
        "read_noise": round(float(rng.uniform(*_READ_NOISE)), 4),
        "seed": draw_seed(rng),
    }


@register_degradation(
    Degradation.LOW_LIGHT,
    params=(NumericParam("gamma", 2.0, 3.5, 1, minimum=1.0, maximum=6.0),),
    verb="Brighten",
    template="Brighten with gamma {gamma}",
    order=6,
    hidden=_exposure,
)
def low_light(
    image: np.ndarray,
    gamma: float,
    alpha: float,
    beta: float,
    photons: float,
    read_noise: float,
    seed: int,
) -> np.ndarray:
    """Darken by beta * (alpha * J)^gamma, then add shot and read noise from ``seed``."""
    if photons <= 0 or read_noise < 0:
        raise ValueError(f"need photons > 0 and read_noise >= 0, got {photons}, {read_noise}")
    dark = np.clip(image, 0.0, 1.0) * np.float32(alpha)  # a negative base has no real power
    dark = cv2.pow(dark, gamma)  # 3x faster than np.power
    dark *= np.float32(beta)
    variance = dark * np.float32(1 / photons)
    variance += np.float32(read_noise**2)
    noise = generator(seed).standard_normal(image.shape, dtype=np.float32)
    noise *= np.sqrt(variance, out=variance)
    dark += noise
    return np.clip(dark, 0.0, 1.0, out=dark)
