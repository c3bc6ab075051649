"""Low-level image ops on float32 RGB in [0, 1] (values may overshoot until clamped).

Each op is a pure function of the image and its recorded parameters: random fields are
regenerated from a recorded seed, kernels from recorded kernel parameters. OpenCV does the
heavy lifting because the spec's reference is ~30x slower on a CPU core.
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from typing import Any

import cv2
import imagecodecs
import numpy as np

from degradations.kernels import make_kernel
from degradations.registry import register_op
from degradations.seeding import generator


class ResizeMode(StrEnum):
    AREA = "area"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    NEAREST = "nearest"


_CV2_INTERPOLATION = {
    ResizeMode.AREA: cv2.INTER_AREA,
    ResizeMode.BILINEAR: cv2.INTER_LINEAR,
    ResizeMode.BICUBIC: cv2.INTER_CUBIC,
    ResizeMode.NEAREST: cv2.INTER_NEAREST,
}
_BORDER = cv2.BORDER_REFLECT_101  # what torch calls "reflect", the reference's padding
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def to_float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) * np.float32(1 / 255)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """round(clamp(x, 0, 1) * 255): the reference's final quantisation."""
    scaled = np.clip(image, 0.0, 1.0) * np.float32(255)
    return np.rint(scaled, out=scaled).astype(np.uint8)


def _contiguous(image: np.ndarray) -> np.ndarray:
    return image if image.flags.c_contiguous else np.ascontiguousarray(image)


@lru_cache(maxsize=4096)
def _cached_kernel(frozen: tuple[tuple[str, Any], ...]) -> np.ndarray:
    return make_kernel(dict(frozen)).astype(np.float32)


@lru_cache(maxsize=4096)
def _gaussian_taps(size: int, sigma: float) -> np.ndarray:
    axis = np.arange(-(size // 2), size // 2 + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (axis / sigma) ** 2)
    return (taps / taps.sum()).astype(np.float32)[:, None]


@register_op("filter")
def apply_kernel(image: np.ndarray, kernel: dict[str, Any]) -> np.ndarray:
    """Correlate with a recorded kernel, reflect padding (the reference's filter2D).

    An isotropic Gaussian is the outer product of two 1-D Gaussians, so it runs as two
    passes: the same kernel up to float rounding, and 5-10x faster than a dense 2-D pass.
    """
    if kernel["family"] == "pulse":
        return image
    image = _contiguous(image)
    if kernel["family"] == "iso":
        taps = _gaussian_taps(int(kernel["size"]), float(kernel["sigma"]))
        return cv2.sepFilter2D(image, -1, taps, taps, borderType=_BORDER)
    weights = _cached_kernel(tuple(sorted(kernel.items())))
    return cv2.filter2D(image, -1, weights, borderType=_BORDER)


@register_op("gaussian_blur")
def gaussian_blur(image: np.ndarray, sigma: float, size: int) -> np.ndarray:
    """Separable isotropic Gaussian blur of an odd kernel size."""
    return cv2.GaussianBlur(_contiguous(image), (size, size), sigma, borderType=_BORDER)


@register_op("resize")
def resize(image: np.ndarray, size: list[int], mode: str) -> np.ndarray:
    """Resize to an exact recorded (height, width); same size is the identity."""
    height, width = int(size[0]), int(size[1])
    if (height, width) == image.shape[:2]:
        return image
    interpolation = _CV2_INTERPOLATION[ResizeMode(mode)]
    return cv2.resize(_contiguous(image), (width, height), interpolation=interpolation)


@register_op("gaussian_noise")
def gaussian_noise(image: np.ndarray, sigma: float, gray: bool, seed: int) -> np.ndarray:
    """Additive Gaussian noise (sigma on the 0-1 scale), one field for all channels if grey."""
    channels = 1 if gray else image.shape[2]
    noise = generator(seed).standard_normal((*image.shape[:2], channels), dtype=np.float32)
    noise *= np.float32(sigma)
    out = image + noise
    return np.clip(out, 0.0, 1.0, out=out)


@register_op("poisson_noise")
def poisson_noise(image: np.ndarray, scale: float, gray: bool, seed: int) -> np.ndarray:
    """Shot noise at the image's own number of 8-bit levels, scaled, as in Real-ESRGAN."""
    source = image @ _LUMA if gray else image
    levels8 = np.rint(np.clip(source, 0.0, 1.0) * np.float32(255)).astype(np.uint8)
    distinct = int(np.count_nonzero(np.bincount(levels8.ravel(), minlength=256)))
    vals = float(2 ** np.ceil(np.log2(max(distinct, 1))))
    quantised = levels8.astype(np.float64) / 255.0
    noisy = generator(seed).poisson(quantised * vals) / vals
    noise = ((noisy - quantised) * scale).astype(np.float32)
    if gray:
        noise = noise[..., None]
    out = image + noise
    return np.clip(out, 0.0, 1.0, out=out)


@register_op("jpeg")
def jpeg(image: np.ndarray, quality: int, subsampling: str = "420") -> np.ndarray:
    """A real libjpeg-turbo round trip (the reference uses a differentiable approximation)."""
    encoded = imagecodecs.jpeg8_encode(to_uint8(image), level=int(quality), subsampling=subsampling)
    return to_float(imagecodecs.jpeg8_decode(encoded))


@register_op("quantize")
def quantize(image: np.ndarray) -> np.ndarray:
    """Round to 8-bit levels mid-pipeline (before resizing the LQ back to HQ size)."""
    return to_float(to_uint8(image))


@register_op("usm_sharpen")
def usm_sharpen(
    image: np.ndarray, kernel_size: int, sigma: float, weight: float, threshold: float
) -> np.ndarray:
    """Unsharp masking of the GT with a soft threshold mask (Real-ESRGAN's USMSharp).

    The 51x51 Gaussian is separable: two 1-D passes match the reference's dense conv to
    float precision at a fraction of the cost.
    """
    taps = cv2.getGaussianKernel(kernel_size, sigma).astype(np.float32)
    image = _contiguous(image)
    residual = cv2.sepFilter2D(image, -1, taps, taps, borderType=_BORDER)
    np.subtract(image, residual, out=residual)
    mask = np.abs(residual)
    mask *= np.float32(255)
    np.greater(mask, np.float32(threshold), out=mask, casting="unsafe")
    soft = cv2.sepFilter2D(mask, -1, taps, taps, borderType=_BORDER)
    sharp = residual
    sharp *= np.float32(weight)
    sharp += image
    np.clip(sharp, 0.0, 1.0, out=sharp)
    sharp -= image
    sharp *= soft
    sharp += image
    return sharp
