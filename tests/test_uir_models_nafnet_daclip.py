"""NAFNet + DA-CLIP restorer: configs, identity at init, conditioning paths, gradients, and a tiny
training run where the right restoration is only knowable from the degradation embedding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from uir_models.archs.nafnet_daclip import (
    ContentCrossAttention,
    ModulatedNAFBlock,
    NAFNetDaClip,
    NAFNetDaClipConfig,
)
from uir_models.factory import create_model, get_model_config, list_models

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIM = 64  # context_dim of nafnet-daclip-tiny (the daclip-tiny embedding size)


def _tiny() -> NAFNetDaClip:
    model = create_model("nafnet-daclip-tiny")
    assert isinstance(model, NAFNetDaClip)
    return model


def _perturb(model: NAFNetDaClip) -> NAFNetDaClip:
    """Give every zero-initialised weight random values, so every path is live."""
    torch.manual_seed(0)
    for mod in model.modules():
        if isinstance(mod, ModulatedNAFBlock):
            nn.init.normal_(mod.beta, 0, 0.5)
            nn.init.normal_(mod.gamma, 0, 0.5)
        elif isinstance(mod, ContentCrossAttention):
            nn.init.normal_(mod.to_out.weight, 0, 0.5)
            nn.init.normal_(mod.null_kv, 0, 0.5)
    nn.init.normal_(model.ending.weight, 0, 0.1)
    return model


def _embeddings(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, DIM, generator=g), torch.randn(batch, DIM, generator=g)


def test_factory_builds_both_configs():
    assert {"nafnet-daclip-tiny", "nafnet-daclip"} <= set(list_models())
    tiny = _tiny()
    assert tiny.config.width == 8 and tiny.config.context_dim == DIM
    assert tiny.size_multiple == 4
    assert sum(p.numel() for p in tiny.parameters()) < 60_000
    # Cross-attention at the middle and the deepest level only (attn_levels: 1).
    attended = [n for n, mod in tiny.named_modules() if isinstance(mod, ContentCrossAttention)]
    assert attended == ["encoders.1.attn", "middle.attn", "decoders.0.attn"]
    paper = create_model("nafnet-daclip")  # ~1 s to build; never run at this size on CPU
    assert isinstance(paper, NAFNetDaClip) and paper.size_multiple == 16
    n = sum(p.numel() for p in paper.parameters())
    # The plain NAFNet-64 [1,1,1,28]/1/[1,1,1,1] is 67.9M; modulations + 3 attentions add ~23M.
    assert 85e6 < n < 95e6, n
    assert create_model("nafnet-daclip-tiny", overrides={"attn_levels": 0}).encoders[1].attn is None


def test_bad_configs_rejected():
    with pytest.raises(ValueError, match="context_dimm"):
        create_model("nafnet-daclip-tiny", overrides={"context_dimm": 512})
    with pytest.raises(ValueError, match="attn_levels"):
        create_model("nafnet-daclip-tiny", overrides={"attn_levels": 3})
    with pytest.raises(ValueError, match="attn_heads"):
        create_model("nafnet-daclip-tiny", overrides={"attn_heads": 3})
    with pytest.raises(ValueError, match="same length"):
        create_model("nafnet-daclip-tiny", overrides={"dec_blocks": [1]})
    params = get_model_config("nafnet-daclip-tiny")
    del params["arch"]
    assert NAFNetDaClipConfig.from_dict(params).cond_hidden == 32


@pytest.mark.parametrize("hw", [(37, 53), (1, 1), (32, 32)])
def test_untrained_model_is_exactly_the_identity(hw):
    model = _tiny().eval()
    lq = torch.rand(2, 3, *hw)
    for seed in (0, 1):
        degradation, content = _embeddings(2, seed)
        with torch.no_grad():
            out = model(lq, degradation * 10, content)
        assert torch.equal(out, lq)


def test_output_depends_on_both_embeddings():
    model = _perturb(_tiny()).eval()
    lq = torch.rand(2, 3, 37, 53)
    degradation, content = _embeddings(2, 0)
    other_degradation, other_content = _embeddings(2, 1)
    with torch.no_grad():
        base = model(lq, degradation, content)
        by_degradation = model(lq, other_degradation, content)
        by_content = model(lq, degradation, other_content)
    assert base.shape == lq.shape and (base - lq).abs().mean() > 1e-2
    assert (by_degradation - base).abs().mean() > 1e-3
    assert (by_content - base).abs().mean() > 1e-3
    # Samples in a batch are conditioned independently.
    with torch.no_grad():
        first = model(lq[:1], degradation[:1], content[:1])
    torch.testing.assert_close(first, base[:1], atol=1e-5, rtol=0)


def test_without_content_attention_the_condition_vector_is_the_only_input():
    """The type-conditioned proxy's configs: no cross-attention, no content argument."""
    model = create_model("nafnet-typed-tiny", overrides={"context_dim": 5})
    assert isinstance(model, NAFNetDaClip)
    assert not any(isinstance(m, ContentCrossAttention) for m in model.modules())
    paper = create_model("nafnet-typed-proxy")
    assert not any(isinstance(m, ContentCrossAttention) for m in paper.modules())
    model = _perturb(model).eval()
    lq = torch.rand(2, 3, 20, 28)
    types = torch.tensor([[1.0, 0, 0, 0, 0], [0, 0, 1.0, 1.0, 0]])
    with torch.no_grad():
        out = model(lq, types)
        swapped = model(lq, types.flip(0))
    assert out.shape == lq.shape and (out - swapped).abs().mean() > 1e-3
    with pytest.raises(ValueError, match="content embedding"):
        model(lq, types, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="content embedding"):
        _tiny()(lq, *_embeddings(2, 0)[:1])
    with pytest.raises(ValueError, match="attn_levels must be 0"):
        create_model("nafnet-typed-tiny", overrides={"attn_levels": 1})


def _l1_step(model: NAFNetDaClip, seed: int) -> None:
    lq = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    degradation, content = _embeddings(2, seed)
    model.zero_grad()
    (model(lq, degradation, content) - lq.flip(-1)).abs().mean().backward()


def _without_gradient(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]


def test_gradients_reach_conditioning_and_attention():
    model = _perturb(_tiny())
    _l1_step(model, 0)
    assert _without_gradient(model) == []
    names = [n for n, _ in model.named_parameters()]
    assert any(n.startswith("degradation_mlp.") for n in names)
    assert any(".modulation." in n for n in names)
    assert any(".attn.to_q." in n for n in names) and any(".attn.to_kv." in n for n in names)


def test_every_parameter_trains_from_the_real_init():
    # Zero-initialised gates open one after another: ending, then beta/gamma and to_out, then
    # the modulations and attention projections behind them. Three Adam steps reach them all.
    torch.manual_seed(0)
    model = _tiny()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(3):
        _l1_step(model, step)
        opt.step()
    _l1_step(model, 3)
    assert _without_gradient(model) == []


def _brightness_task(batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Type A added +0.2 brightness, type B subtracted 0.2; a noisy one-hot degradation
    embedding tells which. The LQ images are drawn first and the clean ones derived from them,
    so the LQ is independent of the type: without the embedding, no restorer beats an L1 of 0.2
    (the clean pixel is LQ - 0.2 or LQ + 0.2 with equal odds whatever the LQ)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    texture = 0.15 * torch.sin(6 * xx + torch.rand(batch, 3, 1, 1, generator=g) * 6) * yy
    lq = 0.5 + texture + (torch.rand(batch, 1, 1, 1, generator=g) - 0.5) * 0.4
    sign = torch.randint(0, 2, (batch,), generator=g) * 2 - 1
    clean = lq - 0.2 * sign[:, None, None, None]
    degradation = 0.05 * torch.randn(batch, DIM, generator=g)
    degradation[:, 0] += (sign > 0).float()
    degradation[:, 1] += (sign < 0).float()
    content = torch.randn(batch, DIM, generator=g)  # unrelated to the type
    return lq, clean, degradation, content


def test_training_uses_the_degradation_embedding():
    torch.manual_seed(0)
    model = _tiny()
    steps = 60
    opt = torch.optim.Adam(model.parameters())
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    for step in range(steps):
        lq, clean, degradation, content = _brightness_task(8, step)
        loss = (model(lq, degradation, content) - clean).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    lq, clean, degradation, content = _brightness_task(32, 10_000)  # held out
    assert (lq - clean).abs().mean().item() == pytest.approx(0.2, abs=1e-4)  # the blind floor
    swapped = degradation[:, [1, 0, *range(2, DIM)]]  # the other type's embedding
    with torch.no_grad():
        out = model(lq, degradation, content)
        out_swapped = model(lq, swapped, content)
    # Measured 0.026-0.032 over four seeds, against 0.2 for any restorer blind to the type.
    assert (out - clean).abs().mean().item() < 0.05
    # The embedding drives the correction: the other type's embedding flips it (ideal: 0.4).
    sign = (lq - clean).mean(dim=(1, 2, 3)).sign()
    flip = ((out_swapped - out).mean(dim=(1, 2, 3)) * sign).min().item()
    assert flip > 0.2, flip
