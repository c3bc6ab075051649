"""PSNR/SSIM (BasicSR conventions) in NumPy and torch, and LPIPS's skip path."""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest
import torch

from uir_models.metrics import (
    MetricUnavailableError,
    _gaussian_1d,
    against_chance,
    load_lpips,
    psnr,
    psnr_torch,
    ssim,
    ssim_torch,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _photo(h: int = 48, w: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([120 + 80 * np.sin(0.2 * x), 100 + 60 * np.cos(0.15 * y), 90 + x + y], -1)
    return (base + rng.normal(0, 5, (h, w, 3))).clip(0, 255).astype(np.uint8)


def _noisy(img: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (img + rng.normal(0, sigma, img.shape)).clip(0, 255).round().astype(np.uint8)


def _to_torch(*images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).double() / 255.0


def test_psnr_known_values():
    img = np.full((16, 16, 3), 100, np.uint8)
    assert psnr(img, img) == math.inf
    assert psnr(img, img + 1) == pytest.approx(10 * math.log10(255**2), abs=1e-9)  # 48.13 dB
    assert psnr(img, img + 1) == pytest.approx(48.13, abs=0.01)
    assert psnr(img, img + 10) == pytest.approx(28.13, abs=0.01)


def test_y_channel_uses_bt601_luma_and_differs_from_rgb():
    a = np.zeros((16, 16, 3), np.uint8)
    b = a.copy()
    b[..., 2] = 255  # pure blue: Y changes by 24.966 only
    assert psnr(a, b, y_channel=True) == pytest.approx(20 * math.log10(255 / 24.966), abs=1e-9)
    assert psnr(a, b) == pytest.approx(10 * math.log10(3), abs=1e-9)  # mse = 255^2 / 3
    img = _photo()
    noisy = _noisy(img, 10)
    assert psnr(img, noisy, y_channel=True) != pytest.approx(psnr(img, noisy), abs=0.05)
    assert ssim(img, noisy, y_channel=True) != pytest.approx(ssim(img, noisy), abs=1e-3)


def test_crop_border_ignores_the_border():
    img = _photo()
    damaged = img.copy()
    damaged[:4] = 0
    damaged[:, -4:] = 255
    assert psnr(img, damaged) < 20
    assert psnr(img, damaged, crop_border=4) == math.inf
    assert ssim(img, damaged, crop_border=4) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="leaves nothing"):
        psnr(img, img, crop_border=20)


def test_ssim_identical_is_one_and_drops_with_noise():
    img = _photo()
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-12)
    values = [ssim(img, _noisy(img, s)) for s in (2, 10, 30)]
    assert 1.0 > values[0] > values[1] > values[2] > 0
    with pytest.raises(ValueError, match="shapes differ"):
        ssim(img, img[:-1])


def test_ssim_window_and_reference_implementation():
    cv2 = pytest.importorskip("cv2")
    np.testing.assert_allclose(_gaussian_1d(), cv2.getGaussianKernel(11, 1.5).ravel(), atol=1e-12)
    metrics = pytest.importorskip("skimage.metrics")
    img, noisy = _photo(), _noisy(_photo(), 15)
    # skimage with Gaussian weights and population covariance is the Wang et al. recipe too.
    ref = metrics.structural_similarity(
        img,
        noisy,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
        channel_axis=-1,
    )
    assert ssim(img, noisy) == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize("y_channel", [False, True])
@pytest.mark.parametrize("crop_border", [0, 3])
def test_torch_versions_agree_with_numpy(y_channel: bool, crop_border: int):
    pairs = [(_photo(seed=s), _noisy(_photo(seed=s), 5 + 10 * s, seed=s)) for s in range(3)]
    pred = _to_torch(*(b for _, b in pairs)).float()
    target = _to_torch(*(a for a, _ in pairs)).float()
    kw = {"crop_border": crop_border, "y_channel": y_channel}
    got_psnr = psnr_torch(pred, target, **kw)
    got_ssim = ssim_torch(pred, target, **kw)
    assert got_psnr.shape == got_ssim.shape == (3,)
    for i, (a, b) in enumerate(pairs):
        assert float(got_psnr[i]) == pytest.approx(psnr(b, a, **kw), abs=1e-3)
        assert float(got_ssim[i]) == pytest.approx(ssim(b, a, **kw), abs=1e-5)
    same = psnr_torch(target, target)
    assert torch.isinf(same).all()


def test_lpips_unavailable_is_a_clear_skip(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", None)  # import lpips -> ImportError
    with pytest.raises(MetricUnavailableError, match=r"LPIPS skipped.*pip install lpips"):
        load_lpips()


def test_lpips_wrapper_and_offline_backbone(monkeypatch):
    calls = []

    class FakeLPIPS(torch.nn.Module):
        def __init__(self, **kwargs):
            super().__init__()
            calls.append(kwargs)
            if kwargs["net"] == "vgg":
                raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

        def forward(self, a, b, normalize=False):
            assert normalize  # the wrapper takes [0, 1] images
            return (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)

    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=FakeLPIPS))
    metric = load_lpips("alex", weights="/some/alex.pth")
    assert calls[-1] == {"net": "alex", "verbose": False, "model_path": "/some/alex.pth"}
    out = metric(torch.zeros(2, 3, 8, 8), torch.ones(2, 3, 8, 8))
    assert out.shape == (2,)
    with pytest.raises(MetricUnavailableError, match=r"LPIPS skipped.*'vgg' weights"):
        load_lpips("vgg")


# --- accuracy against chance ------------------------------------------------------------------


def _binomial_tail(correct: int, total: int, chance: float) -> float:
    return math.fsum(
        math.comb(total, k) * chance**k * (1 - chance) ** (total - k)
        for k in range(correct, total + 1)
    )


def _wilson(correct: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    share = correct / total
    centre = (share + z * z / (2 * total)) / (1 + z * z / total)
    half = z / (1 + z * z / total) * math.sqrt(share * (1 - share) / total + z * z / (4 * total**2))
    return centre - half, centre + half


@pytest.mark.parametrize(("correct", "total", "chance"), [(5, 38, 0.1), (16, 48, 1 / 3),
                                                          (21, 48, 1 / 3), (44, 44, 0.1)])
def test_accuracy_against_chance_matches_the_binomial_tail_and_wilson(correct, total, chance):
    found = against_chance(correct, total, chance)
    low, high = _wilson(correct, total)
    assert found["ci95_low"] == pytest.approx(low, abs=1e-4)
    assert found["ci95_high"] == pytest.approx(high, abs=1e-4)
    assert found["p_above_chance"] == pytest.approx(_binomial_tail(correct, total, chance),
                                                    rel=1e-2, abs=1e-300)


def test_accuracy_against_chance_tells_noise_from_evidence():
    # the demo controller's rainy class (5 of 38 against 0.1) is not evidence; 0.46 of 400 is
    assert against_chance(5, 38, 0.1)["p_above_chance"] > 0.3
    assert against_chance(185, 400, 0.1)["p_above_chance"] < 1e-40
    assert against_chance(0, 0, 0.1) == dict.fromkeys(
        ("ci95_low", "ci95_high", "p_above_chance")
    )
    for bad in ((3, 2, 0.5), (-1, 2, 0.5), (1, 2, 0.0), (1, 2, 1.0)):
        with pytest.raises(ValueError):
            against_chance(*bad)
