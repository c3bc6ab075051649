"""Proxy restorer: factory and configs, NAFNet properties, training sanity, tiled rendering."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from uir_models.archs.nafnet import NAFNet
from uir_models.factory import create_model, list_models
from uir_models.tiling import restore_tiled

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _image(h: int, w: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    smooth = torch.stack([yy, xx, (yy + xx) / 2])[None]
    return smooth * 0.6 + 0.2 + 0.1 * torch.rand(1, 3, h, w, generator=g)


def _perturbed_tiny(local: bool = False) -> NAFNet:
    """NAFNet-tiny with non-trivial weights (at init every block is the identity)."""
    torch.manual_seed(0)
    model = create_model("nafnet-tiny")
    for mod in model.modules():
        if hasattr(mod, "beta"):
            nn.init.normal_(mod.beta, 0, 0.5)
            nn.init.normal_(mod.gamma, 0, 0.5)
            if local:  # channel attention -> constant 1: the model becomes purely local
                nn.init.zeros_(mod.sca[1].weight)
                nn.init.ones_(mod.sca[1].bias)
    nn.init.normal_(model.ending.weight, 0, 0.1)
    return model.eval()


def test_factory_lists_and_creates_configs():
    assert {"nafnet-tiny", "nafnet-proxy"} <= set(list_models())
    tiny = create_model("nafnet-tiny")
    assert isinstance(tiny, NAFNet)
    assert tiny.config.width == 8 and tiny.size_multiple == 4
    assert sum(p.numel() for p in tiny.parameters()) < 50_000
    proxy = create_model("nafnet-proxy")  # built, never run at this size on CPU
    n = sum(p.numel() for p in proxy.parameters())
    assert 25e6 < n < 35e6, n  # NAFNet-32 with [2,2,4,8]/12/[2,2,2,2] is ~29.2M parameters
    assert proxy.size_multiple == 16
    from_mapping = create_model(
        {"arch": "nafnet", "width": 4, "enc_blocks": [1], "middle_blocks": 0, "dec_blocks": [1]}
    )
    assert from_mapping.config.width == 4
    assert create_model("nafnet-tiny", overrides={"width": 4}).config.width == 4


def test_factory_bad_configs():
    with pytest.raises(ValueError, match="nafnet-tiny"):
        create_model("no-such-model")
    with pytest.raises(ValueError, match="widht"):
        create_model("nafnet-tiny", overrides={"widht": 4})
    with pytest.raises(ValueError, match="unknown arch"):
        create_model({"arch": "restormer9000"})
    with pytest.raises(ValueError, match="same length"):
        create_model({"enc_blocks": [1, 1], "dec_blocks": [1], "middle_blocks": 0})
    with pytest.raises(TypeError):
        create_model(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("hw", [(37, 53), (1, 1), (3, 130), (64, 64)])
def test_shape_preserved_and_identity_at_init(hw):
    model = create_model("nafnet-tiny").eval()
    x = torch.rand(2, 3, *hw)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape
    # zero-initialised last conv: the untrained restorer returns its input exactly
    assert torch.equal(y, x)


def test_perturbed_model_changes_odd_sized_input():
    model = _perturbed_tiny()
    x = _image(37, 53)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape and (y - x).abs().mean() > 1e-2


def test_l1_training_reduces_loss():
    torch.manual_seed(0)
    model = create_model("nafnet-tiny").train()
    hq = _image(32, 32, seed=3).repeat(4, 1, 1, 1)
    lq = hq * 0.7 + 0.15  # contrast loss: learnable, so a working loop must cut L1 a lot
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        loss = (model(lq) - hq).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def test_tiling_exact_for_pointwise_model():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 3, 1)
    x = _image(100, 77)
    with torch.no_grad():
        full = conv(x).clamp(0, 1)
    for tile, overlap in [(32, 8), (40, 0), (512, 32), (17, 16)]:
        out = restore_tiled(conv, x, tile=tile, overlap=overlap)
        assert out.shape == x.shape
        torch.testing.assert_close(out, full, atol=1e-6, rtol=0)


def test_tiling_image_smaller_than_tile_is_full_forward():
    model = _perturbed_tiny()
    x = _image(37, 53)
    with torch.no_grad():
        full = model(x).clamp(0, 1)
    torch.testing.assert_close(restore_tiled(model, x, tile=512, overlap=32), full)


def test_tiling_close_to_full_for_local_nafnet():
    # Without channel attention NAFNet-tiny is local; measured: tiled == full to < 1e-6 once
    # the zero-weight margin (overlap // 4 = 12 px) covers its receptive-field radius.
    model = _perturbed_tiny(local=True)
    x = _image(150, 190)
    with torch.no_grad():
        full = model(x).clamp(0, 1)
    out = restore_tiled(model, x, tile=64, overlap=48)
    assert (out - full).abs().max() < 1e-5


def test_tiling_close_to_full_for_nafnet_tiny():
    # Channel attention pools over the whole input, so a tile sees slightly different channel
    # statistics than the full image and no overlap makes it exact. Measured with strongly
    # perturbed weights (mean |f(x)| ~ 0.3): max 0.0077, mean 0.0008 at tile 64 / overlap 32;
    # bounds leave ~2.5x headroom. Overlap 0 (no blending margin) is far worse (max ~1).
    model = _perturbed_tiny()
    x = _image(150, 190)
    with torch.no_grad():
        full = model(x).clamp(0, 1)
    out = restore_tiled(model, x, tile=64, overlap=32)
    diff = (out - full).abs()
    assert diff.max() < 0.02 and diff.mean() < 2e-3
    assert model.training is False
    model.train()
    restore_tiled(model, x, tile=64, overlap=32)
    assert model.training is True  # the previous mode is restored


def test_tiling_bad_arguments():
    conv = nn.Conv2d(3, 3, 1)
    with pytest.raises(ValueError):
        restore_tiled(conv, torch.rand(3, 8, 8))
    with pytest.raises(ValueError):
        restore_tiled(conv, torch.rand(1, 3, 8, 8), tile=16, overlap=16)
