"""Blur kernels: shape, normalisation, symmetry, and agreement with independent formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special

from degradations import engine
from degradations.kernels import make_kernel
from degradations.primitives import apply_kernel

FAMILY_PARAMS = {
    "iso": {"sigma": 1.7},
    "aniso": {"sigma_x": 2.5, "sigma_y": 0.6, "theta": 0.7},
    "generalized_iso": {"sigma": 1.3, "beta": 0.7},
    "generalized_aniso": {"sigma_x": 2.0, "sigma_y": 0.9, "theta": -1.1, "beta": 2.5},
    "plateau_iso": {"sigma": 1.1, "beta": 1.6},
    "plateau_aniso": {"sigma_x": 0.8, "sigma_y": 2.2, "theta": 2.9, "beta": 1.2},
    "sinc": {"cutoff": 1.3},
    "pulse": {},
}
SIZES = (1, 3, 7, 13, 21)


def kernel(family: str, size: int, **params: float) -> np.ndarray:
    return make_kernel({"family": family, "size": size, **FAMILY_PARAMS[family], **params})


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y): x the column offset, y the row offset, from the kernel centre."""
    r = size // 2
    y, x = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
    return x, y


def quadratic_form(size: int, sx: float, sy: float, theta: float) -> np.ndarray:
    """x^T S^-1 x with S written out by hand (not via matrix products)."""
    c, s = math.cos(theta), math.sin(theta)
    sxx = sx**2 * c**2 + sy**2 * s**2
    syy = sx**2 * s**2 + sy**2 * c**2
    sxy = (sx**2 - sy**2) * c * s
    det = sxx * syy - sxy**2
    x, y = grid(size)
    return (syy * x**2 - 2 * sxy * x * y + sxx * y**2) / det


def normalised(k: np.ndarray) -> np.ndarray:
    return k / k.sum()


@pytest.mark.parametrize("size", [s for s in SIZES if s >= 3] + [1])
@pytest.mark.parametrize("family", list(FAMILY_PARAMS))
def test_kernel_shape_sum_finite(family, size):
    k = kernel(family, size)
    assert k.shape == (size, size)
    assert k.dtype == np.float64
    assert np.all(np.isfinite(k))
    assert abs(k.sum() - 1.0) < 1e-9


@pytest.mark.parametrize("family", [f for f in FAMILY_PARAMS if f not in ("sinc", "pulse")])
def test_gaussian_like_kernels_are_non_negative_with_peak_at_centre(family):
    k = kernel(family, 15)
    assert np.all(k >= 0)  # far taps of a sharp generalized kernel underflow to 0
    assert np.unravel_index(np.argmax(k), k.shape) == (7, 7)


@pytest.mark.parametrize("family", ["iso", "generalized_iso", "plateau_iso", "sinc"])
@pytest.mark.parametrize("size", [7, 13, 21])
def test_isotropic_kernels_symmetric(family, size):
    k = kernel(family, size)
    np.testing.assert_allclose(k, k.T, rtol=0, atol=1e-15)
    np.testing.assert_allclose(k, k[::-1, :], rtol=0, atol=1e-15)
    np.testing.assert_allclose(k, k[:, ::-1], rtol=0, atol=1e-15)


@pytest.mark.parametrize("family", ["aniso", "generalized_aniso", "plateau_aniso"])
def test_anisotropic_kernels_are_not_transpose_symmetric(family):
    k = kernel(family, 15)
    assert np.abs(k - k.T).max() > 1e-4


@pytest.mark.parametrize("family", ["aniso", "generalized_aniso", "plateau_aniso"])
def test_rotation_by_quarter_turn_is_transpose(family):
    base = kernel(family, 15, theta=0.0)
    turned = kernel(family, 15, theta=math.pi / 2)
    np.testing.assert_allclose(turned, base.T, rtol=0, atol=1e-12)
    # ... which is the same as swapping the two axis sigmas
    swapped = kernel(
        family, 15, theta=0.0,
        sigma_x=FAMILY_PARAMS[family]["sigma_y"], sigma_y=FAMILY_PARAMS[family]["sigma_x"],
    )
    np.testing.assert_allclose(turned, swapped, rtol=0, atol=1e-12)


@pytest.mark.parametrize("family", ["aniso", "generalized_aniso", "plateau_aniso"])
@pytest.mark.parametrize("theta", [0.3, 1.2, -2.0])
def test_rotation_properties(family, theta):
    k = kernel(family, 17, theta=theta)
    # half a turn is the same ellipse
    np.testing.assert_allclose(kernel(family, 17, theta=theta + math.pi), k, atol=1e-12)
    # mirroring x maps theta to -theta
    np.testing.assert_allclose(kernel(family, 17, theta=-theta), k[:, ::-1], atol=1e-12)
    # point symmetric
    np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-15)


def test_aniso_orientation_x_is_columns():
    """sigma_x > sigma_y at theta 0: wider along columns; theta pi/4 tilts mass to x*y > 0."""
    k = kernel("aniso", 21, sigma_x=3.0, sigma_y=0.8, theta=0.0)
    x, y = grid(21)
    assert (k * x**2).sum() > 5 * (k * y**2).sum()
    tilted = kernel("aniso", 21, sigma_x=3.0, sigma_y=0.8, theta=math.pi / 4)
    assert (tilted * x * y).sum() > 0.5


@pytest.mark.parametrize("size", [7, 13, 21])
@pytest.mark.parametrize("sigma", [0.2, 0.9, 2.0, 3.0])
def test_iso_gaussian_matches_independent_formula(size, sigma):
    x, y = grid(size)
    expected = normalised(np.exp(-(x**2 + y**2) / (2 * sigma**2)))
    got = make_kernel({"family": "iso", "size": size, "sigma": sigma})
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize(
    ("sx", "sy", "theta"), [(2.5, 0.6, 0.7), (0.3, 2.9, -2.2), (1.5, 1.0, math.pi / 3)]
)
def test_aniso_family_matches_independent_formulas(sx, sy, theta):
    form = quadratic_form(21, sx, sy, theta)
    common = {"size": 21, "sigma_x": sx, "sigma_y": sy, "theta": theta}
    np.testing.assert_allclose(
        make_kernel({"family": "aniso", **common}), normalised(np.exp(-0.5 * form)),
        rtol=1e-9, atol=1e-15,
    )
    beta = 1.7
    np.testing.assert_allclose(
        make_kernel({"family": "generalized_aniso", "beta": beta, **common}),
        normalised(np.exp(-0.5 * form**beta)), rtol=1e-9, atol=1e-15,
    )
    np.testing.assert_allclose(
        make_kernel({"family": "plateau_aniso", "beta": beta, **common}),
        normalised(1.0 / (1.0 + form**beta)), rtol=1e-9, atol=1e-15,
    )


def test_generalized_with_beta_one_is_gaussian():
    g = make_kernel({"family": "generalized_iso", "size": 13, "sigma": 1.4, "beta": 1.0})
    np.testing.assert_allclose(g, make_kernel({"family": "iso", "size": 13, "sigma": 1.4}),
                               atol=1e-15)


@pytest.mark.parametrize("size", [7, 11, 13, 21])
@pytest.mark.parametrize("cutoff", [math.pi / 5, 1.0, math.pi / 3, 2.4, math.pi])
def test_sinc_matches_jinc_and_centre_limit(size, cutoff):
    x, y = grid(size)
    r = np.hypot(x, y)
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = cutoff * special.j1(cutoff * r) / (2 * np.pi * r)
    c = size // 2
    raw[c, c] = cutoff**2 / (4 * np.pi)  # the r -> 0 limit of the jinc
    # the limit really is the limit: compare with a tiny radius
    tiny = 1e-6
    assert abs(cutoff * special.j1(cutoff * tiny) / (2 * np.pi * tiny) - raw[c, c]) < 1e-9
    got = make_kernel({"family": "sinc", "size": size, "cutoff": cutoff})
    np.testing.assert_allclose(got, raw / raw.sum(), rtol=1e-9, atol=1e-14)
    # the centre is the largest tap (no NaN / zero from 0/0)
    assert got[c, c] == got.max()


def test_pulse_kernel_is_a_centred_one():
    k = make_kernel({"family": "pulse", "size": 21})
    assert k[10, 10] == 1.0
    assert np.count_nonzero(k) == 1


def test_pulse_is_identity_when_applied():
    rng = np.random.default_rng(3)
    image = rng.random((33, 40, 3), dtype=np.float32)
    for size in (1, 7, 21):
        out = apply_kernel(image, {"family": "pulse", "size": size})
        np.testing.assert_array_equal(out, image)
    u8 = (rng.random((20, 24, 3)) * 255).astype(np.uint8)
    ops = [{"op": "filter", "params": {"kernel": {"family": "pulse", "size": 21}}}]
    np.testing.assert_array_equal(engine.execute(u8, ops), u8)


def test_apply_kernel_is_correlation_with_reflect_padding():
    """An impulse returns the point-reflected kernel (correlation, like torch conv2d)."""
    params = {"family": "aniso", "size": 7, "sigma_x": 2.0, "sigma_y": 0.5, "theta": 0.5}
    k = make_kernel(params)
    image = np.zeros((15, 15, 3), dtype=np.float32)
    image[7, 7, :] = 1.0
    out = apply_kernel(image, params)
    np.testing.assert_allclose(out[4:11, 4:11, 0], k[::-1, ::-1], atol=1e-6)
    # a constant image stays constant (reflect padding, normalised kernel)
    flat = np.full((9, 9, 3), 0.25, dtype=np.float32)
    np.testing.assert_allclose(apply_kernel(flat, {"family": "sinc", "size": 21, "cutoff": 1.0}),
                               flat, atol=1e-5)


@pytest.mark.parametrize("family", [f for f in FAMILY_PARAMS if f != "pulse"])
def test_apply_kernel_matches_direct_correlation(family):
    """Whatever fast path an op takes, it applies the kernel make_kernel describes."""
    rng = np.random.default_rng(5)
    image = rng.random((12, 14, 3), dtype=np.float32)
    params = {"family": family, "size": 5, **FAMILY_PARAMS[family]}
    k = make_kernel(params)
    padded = np.pad(image.astype(np.float64), ((2, 2), (2, 2), (0, 0)), mode="reflect")
    expected = np.zeros(image.shape)
    for dy in range(5):
        for dx in range(5):
            expected += k[dy, dx] * padded[dy : dy + 12, dx : dx + 14]
    np.testing.assert_allclose(apply_kernel(image, params), expected, atol=1e-5)


@pytest.mark.parametrize("sigma", [0.2, 0.7, 1.0, 2.3, 3.0])
def test_tip_blur_is_gaussian_of_sigma_with_3_sigma_support(sigma):
    """tip.md blur: isotropic Gaussian, odd size >= 2*ceil(3 sigma)+1."""
    size = 2 * math.ceil(3 * sigma) + 1
    x, y = grid(size)
    expected = normalised(np.exp(-(x**2 + y**2) / (2 * sigma**2)))
    image = np.zeros((size + 20, size + 20, 3), dtype=np.uint8)
    c = (size + 20) // 2
    image[c, c] = 255
    out = engine.execute(image, [{"op": "blurry", "params": {"sigma": sigma}}])
    r = size // 2
    window = out[c - r : c + r + 1, c - r : c + r + 1, 1].astype(np.float64)
    np.testing.assert_allclose(window, np.round(expected * 255), atol=1)
    # nothing leaks outside the support
    assert out[..., 1].sum() == pytest.approx(window.sum())


@pytest.mark.parametrize("size", [0, 2, 8, 20, -1, -3])
@pytest.mark.parametrize("family", ["iso", "sinc", "pulse", "aniso"])
def test_even_zero_negative_size_rejected(family, size):
    with pytest.raises(ValueError, match="odd"):
        kernel(family, size)


def test_unknown_family_rejected():
    with pytest.raises(ValueError):
        make_kernel({"family": "box", "size": 7})
