"""Blur kernel families of the Real-ESRGAN specification, built from recorded parameters.

Records store kernel parameters, never arrays: ``make_kernel(params)`` rebuilds the exact
kernel, and ``sample_kernel`` draws the parameters with the spec's probabilities.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any

import numpy as np
from scipy import special


class KernelFamily(StrEnum):
    ISO = "iso"
    ANISO = "aniso"
    GENERALIZED_ISO = "generalized_iso"
    GENERALIZED_ANISO = "generalized_aniso"
    PLATEAU_ISO = "plateau_iso"
    PLATEAU_ANISO = "plateau_aniso"
    SINC = "sinc"
    PULSE = "pulse"


ISOTROPIC = {KernelFamily.ISO, KernelFamily.GENERALIZED_ISO, KernelFamily.PLATEAU_ISO}
GENERALIZED = {KernelFamily.GENERALIZED_ISO, KernelFamily.GENERALIZED_ANISO}
PLATEAU = {KernelFamily.PLATEAU_ISO, KernelFamily.PLATEAU_ANISO}


def _quadratic_form(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """x^T S^-1 x on the kernel grid, S the covariance of sigma_x, sigma_y rotated by theta."""
    cos, sin = math.cos(theta), math.sin(theta)
    rotation = np.array([[cos, -sin], [sin, cos]])
    covariance = rotation @ np.diag([sigma_x**2, sigma_y**2]) @ rotation.T
    inverse = np.linalg.inv(covariance)
    axis = np.arange(-(size // 2), size // 2 + 1, dtype=np.float64)
    xx, yy = np.meshgrid(axis, axis)
    grid = np.stack([xx, yy], axis=-1)
    return np.sum((grid @ inverse) * grid, axis=-1)


def circular_sinc(size: int, cutoff: float) -> np.ndarray:
    """2-D circular low-pass (jinc) kernel: ringing and overshoot artifacts."""
    centre = (size - 1) / 2
    axis = np.arange(size, dtype=np.float64) - centre
    radius = np.hypot(axis[None, :], axis[:, None])
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = cutoff * special.j1(cutoff * radius) / (2 * np.pi * radius)
    kernel[size // 2, size // 2] = cutoff**2 / (4 * np.pi)
    return kernel / kernel.sum()


def make_kernel(params: dict[str, Any]) -> np.ndarray:
    """Rebuild a normalised float64 kernel from its recorded parameters."""
    family = KernelFamily(params["family"])
    size = int(params["size"])
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd integer, got {size}")
    if family is KernelFamily.PULSE:
        kernel = np.zeros((size, size))
        kernel[size // 2, size // 2] = 1.0
        return kernel
    if family is KernelFamily.SINC:
        return circular_sinc(size, float(params["cutoff"]))
    if family in ISOTROPIC:
        sigma_x = sigma_y = float(params["sigma"])
        theta = 0.0
    else:
        sigma_x, sigma_y = float(params["sigma_x"]), float(params["sigma_y"])
        theta = float(params["theta"])
    form = _quadratic_form(size, sigma_x, sigma_y, theta)
    if family in GENERALIZED:
        kernel = np.exp(-0.5 * np.power(form, float(params["beta"])))
    elif family in PLATEAU:
        kernel = 1.0 / (np.power(form, float(params["beta"])) + 1.0)
    else:
        kernel = np.exp(-0.5 * form)
    return kernel / kernel.sum()


def _beta(rng: np.random.Generator, low: float, high: float) -> float:
    """Half the draws below 1 and half above, as the reference does for shape parameters."""
    if rng.uniform() < 0.5:
        return float(rng.uniform(low, 1.0))
    return float(rng.uniform(1.0, high))


def sample_kernel(rng: np.random.Generator, config: Any) -> dict[str, Any]:
    """Draw one kernel's parameters from a ``KernelConfig``."""
    size = int(rng.choice(config.sizes))
    if rng.uniform() < config.sinc_prob:
        low = math.pi / 3 if size < config.sinc_small_size else math.pi / 5
        return {"family": "sinc", "size": size, "cutoff": float(rng.uniform(low, math.pi))}
    families = list(config.family_probs)
    probs = np.array([config.family_probs[f] for f in families], dtype=np.float64)
    family = KernelFamily(families[int(rng.choice(len(families), p=probs / probs.sum()))])
    params: dict[str, Any] = {"family": family.value, "size": size}
    if family in ISOTROPIC:
        params["sigma"] = float(rng.uniform(*config.sigma))
    else:
        params["sigma_x"] = float(rng.uniform(*config.sigma))
        params["sigma_y"] = float(rng.uniform(*config.sigma))
        params["theta"] = float(rng.uniform(-math.pi, math.pi))
    if family in GENERALIZED:
        params["beta"] = _beta(rng, *config.generalized_beta)
    elif family in PLATEAU:
        params["beta"] = _beta(rng, *config.plateau_beta)
    return params


def sample_sinc(
    rng: np.random.Generator, sizes: tuple[int, ...], cutoff: tuple[float, float]
) -> dict[str, Any]:
    return {"family": "sinc", "size": int(rng.choice(sizes)), "cutoff": float(rng.uniform(*cutoff))}
