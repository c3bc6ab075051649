"""TIP's four parameterised operations as prompt-addressable degradation types.

Ranges and printed precision are tip.md's definitions; the value applied is the value
printed, because pipelines sample through ``NumericParam.sample`` (which rounds).
"""

from __future__ import annotations

import math

import numpy as np

from degradations.names import Degradation
from degradations.primitives import gaussian_blur, gaussian_noise, jpeg, resize
from degradations.registry import NumericParam, register_degradation
from degradations.seeding import seed_only


def blur_kernel_size(sigma: float) -> int:
    """Odd size covering +-3 sigma: 2 * ceil(3 sigma) + 1."""
    return 2 * math.ceil(3 * sigma) + 1


def downsampled_size(shape: tuple[int, int], factor: float) -> tuple[int, int]:
    return max(1, round(shape[0] / factor)), max(1, round(shape[1] / factor))


@register_degradation(
    Degradation.BLURRY,
    params=(NumericParam("sigma", 0.2, 3.0, 1, minimum=0.1, maximum=50.0, doc="pixels"),),
    verb="Deblur",
    template="Deblur with sigma {sigma}",
    order=10,
)
def blurry(image: np.ndarray, sigma: float) -> np.ndarray:
    """Isotropic Gaussian blur."""
    return gaussian_blur(image, sigma=sigma, size=blur_kernel_size(sigma))


@register_degradation(
    Degradation.LOW_RESOLUTION,
    params=(NumericParam("factor", 1.0, 4.0, 1, minimum=1.0, maximum=32.0, doc="HQ/LQ side"),),
    verb="Upsample",
    template="Upsample to {factor}x",
    order=20,
)
def low_resolution(image: np.ndarray, factor: float, mode: str = "bicubic") -> np.ndarray:
    """Downsample by a factor (the LQ may be resized back to HQ size by the pipeline)."""
    return resize(image, size=list(downsampled_size(image.shape[:2], factor)), mode=mode)


@register_degradation(
    Degradation.NOISY,
    params=(NumericParam("sigma", 0.01, 0.25, 2, minimum=0.0, maximum=1.0, doc="0-1 scale"),),
    verb="Denoise",
    template="Denoise with sigma {sigma}",
    order=30,
    hidden=seed_only,
)
def noisy(image: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Additive colour Gaussian noise."""
    return gaussian_noise(image, sigma=sigma, gray=False, seed=seed)


@register_degradation(
    Degradation.JPEG_COMPRESSED,
    params=(NumericParam("quality", 30, 95, 0, minimum=1, maximum=100),),
    verb="Dejpeg",
    template="Dejpeg with quality {quality}",
    order=40,
)
def jpeg_compressed(image: np.ndarray, quality: int) -> np.ndarray:
    """Real JPEG round trip at an integer quality."""
    return jpeg(image, quality=quality)
