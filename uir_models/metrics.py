"""Image-quality metrics with BasicSR's conventions, so our numbers compare with papers.

* PSNR and SSIM on the 0-255 scale, optionally on the BT.601 luma ``Y`` (16-235, as BasicSR's
  ``to_y_channel`` / MATLAB ``rgb2ycbcr``; unrounded, like BasicSR) and after cropping
  ``crop_border`` pixels from every side (the super-resolution convention).
* SSIM: 11x11 Gaussian window, sigma 1.5, "valid" filtering, K1 0.01, K2 0.03, computed per
  channel and averaged.
* NumPy versions take HxWxC (or HxW) images in RGB order, uint8 or float on 0-255; batched torch
  versions take NCHW float tensors on [0, 1] and return one value per image. The torch versions
  do not quantise: round ``pred`` to 1/255 steps first to match saved-PNG evaluations exactly.
* :func:`against_chance` says whether an accuracy over a few dozen samples is evidence of
  anything: its Wilson 95% interval and the one-sided binomial p-value against chance.
* LPIPS needs the optional ``lpips`` package and its backbone weights; :func:`load_lpips`
  raises :class:`MetricUnavailableError`, whose message an evaluator can print as a skip.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import correlate1d
from scipy.stats import binomtest
from torch import nn

# BT.601 luma from RGB in [0, 1] to Y in [16, 235] (0-255 scale): BasicSR's rgb2ycbcr.
_Y_WEIGHTS = (65.481, 128.553, 24.966)
_Y_OFFSET = 16.0
_SSIM_SIZE = 11
_SSIM_SIGMA = 1.5
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


class MetricUnavailableError(RuntimeError):
    """A metric's package or weights are missing; the message says what to install or fetch."""


def against_chance(correct: int, total: int, chance: float) -> dict[str, float | None]:
    """Wilson 95% interval of ``correct / total`` and the one-sided binomial p-value of doing
    at least this well by guessing at ``chance``.

    Demo evaluations have tens of samples per class: 5 right of 38 (0.13) is not evidence of
    beating 0.1 chance (p 0.33), so every reported accuracy carries both.
    """
    if not 0 <= correct <= total:
        raise ValueError(f"need 0 <= correct <= total, got {correct} of {total}")
    if not 0 < chance < 1:
        raise ValueError(f"chance must be in (0, 1), got {chance}")
    if total == 0:
        return {"ci95_low": None, "ci95_high": None, "p_above_chance": None}
    test = binomtest(correct, total, chance, alternative="greater")
    interval = binomtest(correct, total).proportion_ci(0.95, method="wilson")
    return {
        "ci95_low": round(float(interval.low), 4),
        "ci95_high": round(float(interval.high), 4),
        "p_above_chance": float(f"{test.pvalue:.3g}"),  # tiny p-values keep their digits
    }


def _gaussian_1d(size: int = _SSIM_SIZE, sigma: float = _SSIM_SIGMA) -> np.ndarray:
    """The same normalised kernel as ``cv2.getGaussianKernel(11, 1.5)``."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def _prepare(
    a: np.ndarray, b: np.ndarray, crop_border: int, y_channel: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Float64 HxWxC copies on 0-255, cropped and optionally reduced to Y."""
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    if a.ndim not in (2, 3):
        raise ValueError(f"expected an HxW or HxWxC image, got shape {a.shape}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    out = []
    for img in (a, b):
        x = img.astype(np.float64)
        if x.ndim == 2:
            x = x[..., None]
        if crop_border:
            x = x[crop_border:-crop_border, crop_border:-crop_border]
        if y_channel:
            if x.shape[-1] != 3:
                raise ValueError(f"y_channel needs 3-channel RGB images, got shape {img.shape}")
            x = (x / 255.0) @ np.asarray(_Y_WEIGHTS) + _Y_OFFSET
            x = x[..., None]
        out.append(x)
    if out[0].shape[0] == 0 or out[0].shape[1] == 0:
        raise ValueError(f"crop_border {crop_border} leaves nothing of shape {a.shape}")
    return out[0], out[1]


def psnr(a: np.ndarray, b: np.ndarray, *, crop_border: int = 0, y_channel: bool = False) -> float:
    """PSNR in dB on the 0-255 scale; ``inf`` for identical images."""
    x, y = _prepare(a, b, crop_border, y_channel)
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def _ssim_channel(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM of one HxW channel: Gaussian statistics over valid 11x11 windows only."""
    kernel = _gaussian_1d()
    half = _SSIM_SIZE // 2

    def blur(z: np.ndarray) -> np.ndarray:
        z = correlate1d(correlate1d(z, kernel, axis=0), kernel, axis=1)
        return z[half:-half, half:-half]

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + _C1) * (2 * cov + _C2)
    den = (mu_x**2 + mu_y**2 + _C1) * (var_x + var_y + _C2)
    return float(np.mean(num / den))


def ssim(a: np.ndarray, b: np.ndarray, *, crop_border: int = 0, y_channel: bool = False) -> float:
    """Mean SSIM over channels on the 0-255 scale (1.0 for identical images)."""
    x, y = _prepare(a, b, crop_border, y_channel)
    if min(x.shape[:2]) < _SSIM_SIZE:
        raise ValueError(f"SSIM needs at least {_SSIM_SIZE}x{_SSIM_SIZE} pixels, got {x.shape}")
    return float(np.mean([_ssim_channel(x[..., c], y[..., c]) for c in range(x.shape[-1])]))


def _prepare_torch(
    pred: torch.Tensor, target: torch.Tensor, crop_border: int, y_channel: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 NCHW copies on 0-255, cropped and optionally reduced to Y."""
    if pred.shape != target.shape:
        raise ValueError(f"tensor shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.ndim != 4:
        raise ValueError(f"expected NCHW tensors, got shape {tuple(pred.shape)}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    out = []
    for t in (pred, target):
        x = t.detach().to(torch.float64)
        if crop_border:
            x = x[..., crop_border:-crop_border, crop_border:-crop_border]
        if y_channel:
            if x.shape[1] != 3:
                raise ValueError(f"y_channel needs RGB tensors, got shape {tuple(t.shape)}")
            weights = torch.tensor(_Y_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = ((x * weights).sum(dim=1, keepdim=True) + _Y_OFFSET) / 255.0
        out.append(x * 255.0)
    if out[0].shape[-1] == 0 or out[0].shape[-2] == 0:
        raise ValueError(f"crop_border {crop_border} leaves nothing of shape {tuple(pred.shape)}")
    return out[0], out[1]


def psnr_torch(
    pred: torch.Tensor, target: torch.Tensor, crop_border: int = 0, y_channel: bool = False
) -> torch.Tensor:
    """PSNR per image (float64, shape [B]) of [0, 1] NCHW tensors; ``inf`` where identical."""
    x, y = _prepare_torch(pred, target, crop_border, y_channel)
    mse = (x - y).pow(2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(255.0**2 / mse)  # mse == 0 gives inf, as the NumPy version


def ssim_torch(
    pred: torch.Tensor, target: torch.Tensor, crop_border: int = 0, y_channel: bool = False
) -> torch.Tensor:
    """SSIM per image (float64, shape [B]) of [0, 1] NCHW tensors, same recipe as :func:`ssim`."""
    x, y = _prepare_torch(pred, target, crop_border, y_channel)
    if min(x.shape[-2:]) < _SSIM_SIZE:
        raise ValueError(f"SSIM needs at least {_SSIM_SIZE}x{_SSIM_SIZE} pixels, got {x.shape}")
    channels = x.shape[1]
    k = torch.from_numpy(_gaussian_1d()).to(x)
    window = torch.outer(k, k).expand(channels, 1, _SSIM_SIZE, _SSIM_SIZE)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, window, groups=channels)  # no padding: valid windows only

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + _C1) * (2 * cov + _C2)
    den = (mu_x**2 + mu_y**2 + _C1) * (var_x + var_y + _C2)
    return (num / den).mean(dim=(1, 2, 3))


class LpipsMetric(nn.Module):
    """LPIPS distance per image (shape [B]) of [0, 1] NCHW tensors; lower is more similar."""

    def __init__(self, model: nn.Module, net: str) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.net = net

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # normalize=True maps [0, 1] to the [-1, 1] range LPIPS was calibrated on.
        return self.model(pred, target, normalize=True).flatten()


def load_lpips(net: str = "alex", weights: str | None = None) -> LpipsMetric:
    """LPIPS with the ``lpips`` package's calibrated linear layers (or ``weights``, a path).

    Its backbone (AlexNet/VGG/SqueezeNet on ImageNet) comes from torchvision's cache or a
    download; when either the package or the backbone weights cannot be had, raise
    :class:`MetricUnavailableError` instead of failing mid-evaluation.
    """
    try:
        import lpips  # optional: not a dependency of the project
    except ImportError as err:
        raise MetricUnavailableError(
            "LPIPS skipped: the 'lpips' package is not installed (pip install lpips)"
        ) from err
    kwargs: dict[str, object] = {"net": net, "verbose": False}
    if weights is not None:
        kwargs["model_path"] = weights
    try:
        model = lpips.LPIPS(**kwargs)
    except (OSError, RuntimeError) as err:  # URLError is an OSError: offline download
        raise MetricUnavailableError(
            f"LPIPS skipped: its {net!r} weights are unavailable ({err}); put the torchvision "
            f"backbone in {torch.hub.get_dir()}/checkpoints or pass weights=/path/to/lpips.pth"
        ) from err
    return LpipsMetric(model, net)
