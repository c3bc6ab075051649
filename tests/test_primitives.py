"""Low-level ops against the reference's formulas and their expected statistics."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from degradations.primitives import (
    gaussian_noise,
    jpeg,
    poisson_noise,
    resize,
    to_float,
    to_uint8,
    usm_sharpen,
)
from uir.demo import demo_images
from uir.imageio import load_rgb


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return to_float(load_rgb(demo_images()[0])[:128, :128])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


def test_usm_matches_the_reference_dense_51x51_conv(photo):
    """Real-ESRGAN's USMSharp: dense 2-D Gaussian (cv2.getGaussianKernel(51, 0)) with reflect."""
    taps = cv2.getGaussianKernel(51, 0)
    dense = (taps @ taps.T).astype(np.float32)
    blur = cv2.filter2D(photo, -1, dense, borderType=cv2.BORDER_REFLECT_101)
    residual = photo - blur
    mask = (np.abs(residual) * 255 > 10).astype(np.float32)
    soft = cv2.filter2D(mask, -1, dense, borderType=cv2.BORDER_REFLECT_101)
    sharp = np.clip(photo + 0.5 * residual, 0, 1)
    reference = soft * sharp + (1 - soft) * photo
    ours = usm_sharpen(photo, kernel_size=51, sigma=8.0, weight=0.5, threshold=10.0)
    assert np.abs(ours - reference).max() < 1e-5
    assert psnr(ours, photo) < 40  # it does sharpen


def test_gaussian_noise_level_and_grey(photo):
    flat = np.full((256, 256, 3), 0.5, np.float32)
    out = gaussian_noise(flat, sigma=0.05, gray=False, seed=1)
    assert abs(float((out - flat).std()) - 0.05) < 0.002
    assert not np.array_equal(out[..., 0], out[..., 1])
    grey = gaussian_noise(flat, sigma=0.05, gray=True, seed=1)
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    assert out.min() >= 0 and out.max() <= 1


def test_poisson_noise_is_shot_noise(photo):
    """Variance ~ intensity / vals * scale^2 with vals = 2^ceil(log2(distinct levels))."""
    ramp = np.repeat(np.linspace(0.1, 0.9, 256, dtype=np.float32)[None, :, None], 256, 0)
    image = np.repeat(np.rint(ramp * 255) / 255, 3, axis=2).astype(np.float32)
    vals = 2 ** np.ceil(np.log2(len(np.unique(np.rint(image * 255)))))
    out = poisson_noise(image, scale=1.0, gray=False, seed=3)
    noise = (out - image)[:, 100:110]
    expected = float(image[0, 100:110, 0].mean()) / vals
    assert abs(float(noise.var()) / expected - 1) < 0.1
    grey = poisson_noise(image, scale=1.0, gray=True, seed=3)
    assert np.array_equal(grey[..., 0] - image[..., 0], grey[..., 2] - image[..., 2])


def test_jpeg_is_a_real_codec_and_quality_is_monotone(photo):
    qualities = [10, 30, 60, 95]
    scores = [psnr(jpeg(photo, quality=q), photo) for q in qualities]
    assert scores == sorted(scores) and scores[0] < 32 < scores[-1]
    once = jpeg(photo, quality=50)
    assert np.array_equal(to_uint8(jpeg(once, quality=50)), to_uint8(jpeg(once, quality=50)))


def test_resize_exact_size_and_identity(photo):
    assert resize(photo, size=[31, 47], mode="bicubic").shape == (31, 47, 3)
    assert resize(photo, size=list(photo.shape[:2]), mode="area") is photo
