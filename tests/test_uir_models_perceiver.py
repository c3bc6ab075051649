"""Quality perceiver on a tiny random-weight CLIP: prompt learning, L_clip, crops, loading."""

import pytest
import torch

from uir_models.quality.perceiver import (
    QUALITY_CLASSES,
    QualityPerceiver,
    WeightsUnavailableError,
    clip_input_size,
    load_clip,
    train_step,
)
from uir_models.quality.prompt_training import crop_size

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
N_CTX = 4


def tiny_bundle(seed: int = 0):
    torch.manual_seed(seed)
    return load_clip("uir-tiny-clip", pretrained=None, model_config=TINY)


def tiny_perceiver(seed: int = 0) -> QualityPerceiver:
    return QualityPerceiver(
        tiny_bundle(seed), n_ctx=N_CTX, generator=torch.Generator().manual_seed(1)
    )


def triplet(n: int, seed: int):
    """Three jittered constant-colour classes (bad red, medium green, good blue), plus noise."""
    g = torch.Generator().manual_seed(seed)
    base = torch.eye(3).view(3, 1, 3, 1, 1) * 0.6 + 0.2
    jitter = 0.1 * torch.randn(3, n, 3, 1, 1, generator=g)
    noise = 0.05 * torch.randn(3, n, 3, 32, 32, generator=g)
    lq, mq, hq = (base + jitter + noise).clamp(0, 1)
    return lq, mq, hq


def accuracy(perceiver, lq, mq, hq) -> float:
    with torch.no_grad():
        pred = perceiver(torch.cat([lq, mq, hq])).argmax(-1)
    labels = torch.arange(3).repeat_interleave(len(lq))
    return float((pred == labels).float().mean())


def test_only_context_trains_and_clip_is_frozen():
    perceiver = tiny_perceiver()
    trainable = [p for p in perceiver.parameters() if p.requires_grad]
    assert len(trainable) == 1 and trainable[0] is perceiver.ctx
    assert sum(p.numel() for p in trainable) == 3 * N_CTX * 32
    before = {k: v.clone() for k, v in perceiver.clip.state_dict().items()}
    ctx_before = perceiver.ctx.detach().clone()
    optimizer = torch.optim.AdamW([perceiver.ctx], lr=1e-2)
    train_step(perceiver, optimizer, *triplet(4, seed=0))
    after = perceiver.clip.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(ctx_before, perceiver.ctx)


def test_last_context_vector_is_class_token_embedding():
    perceiver = tiny_perceiver()
    bundle_tok = perceiver.clip.token_embedding
    from open_clip import get_tokenizer

    tok = get_tokenizer("uir-tiny-clip")
    for i, name in enumerate(QUALITY_CLASSES):
        word_id = tok([name])[0][1]
        assert torch.equal(perceiver.ctx[i, -1], bundle_tok.weight[word_id])
        assert perceiver.ctx[i, :-1].std() < 0.05  # the rest is N(0, 0.02)
    # the prompt's class word stays right after the context, then "." and EOT
    assert perceiver.tokens[0, 1 + N_CTX] == tok(["terrible"])[0][1]


def test_logits_shape_and_probabilities():
    perceiver = tiny_perceiver()
    images = torch.rand(5, 3, 48, 40)  # any size: resized to CLIP's input
    logits = perceiver(images)
    assert logits.shape == (5, 3)
    probs = perceiver.probabilities(images)
    torch.testing.assert_close(probs.sum(-1), torch.ones(5))


def test_resnet_tower_clip():
    """open_clip's ResNet towers (RN50 ...) give ``image_size`` as an int, ViTs as a pair."""
    resnet = {**TINY, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8}}
    torch.manual_seed(0)
    bundle = load_clip("uir-tiny-clip-rn", pretrained=None, model_config=resnet)
    perceiver = QualityPerceiver(bundle, n_ctx=N_CTX)
    assert clip_input_size(perceiver.clip) == (32, 32) and crop_size(perceiver, None) == 32
    assert perceiver(torch.rand(2, 3, 40, 48)).shape == (2, 3)


def test_training_beats_chance_on_separable_triplets():
    perceiver = tiny_perceiver()
    train = triplet(16, seed=1)
    start = accuracy(perceiver, *train)
    optimizer = torch.optim.AdamW([perceiver.ctx], lr=5e-2)
    for _ in range(40):
        train_step(perceiver, optimizer, *train)
    end = accuracy(perceiver, *train)
    assert end > 0.8, (start, end)
    assert end > start
    assert accuracy(perceiver, *triplet(16, seed=2)) > 0.6  # held out


def test_clip_loss_uses_logit_scale_and_decreases_toward_excellent():
    perceiver = tiny_perceiver()
    clean = triplet(8, seed=3)[2]
    with torch.no_grad():
        loss = perceiver.clip_quality_loss(clean)
        unscaled = 1 - (perceiver(clean) / perceiver.clip.logit_scale.exp()).softmax(-1)[:, 2]
        scaled = 1 - perceiver.probabilities(clean)[:, 2]
    assert perceiver.clip.logit_scale.exp() > 10
    torch.testing.assert_close(loss, scaled.mean())
    assert not torch.allclose(loss, unscaled.mean(), atol=1e-3)
    optimizer = torch.optim.AdamW([perceiver.ctx], lr=5e-2)
    first = float(loss)
    for _ in range(10):
        step_loss = perceiver.clip_quality_loss(clean)
        optimizer.zero_grad()
        step_loss.backward()
        optimizer.step()
    with torch.no_grad():
        assert float(perceiver.clip_quality_loss(clean)) < first - 0.1


def test_context_save_load_round_trip(tmp_path):
    perceiver = tiny_perceiver()
    with torch.no_grad():
        perceiver.ctx.add_(torch.randn_like(perceiver.ctx))
    path = tmp_path / "ctx.pt"
    perceiver.save_context(path)
    assert path.stat().st_size < 10_000
    other = tiny_perceiver()
    other.load_context(path)
    assert torch.equal(other.ctx, perceiver.ctx)
    longer = QualityPerceiver(tiny_bundle(), n_ctx=N_CTX + 1)
    with pytest.raises(ValueError, match="context file"):
        longer.load_context(path)


def test_load_clip_from_local_checkpoint(tmp_path):
    source = tiny_bundle(seed=5).model
    path = tmp_path / "tiny_clip.pt"
    torch.save(source.state_dict(), path)
    torch.manual_seed(99)  # a fresh random init would differ
    loaded = load_clip("uir-tiny-clip", pretrained=str(path), model_config=TINY)
    assert loaded.pretrained == str(path)
    want = source.state_dict()
    got = loaded.model.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_offline_tag_raises_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match=r"laion400m_e31.*local checkpoint"):
        load_clip("ViT-B-32", pretrained="laion400m_e31", cache_dir=str(tmp_path))


def test_unknown_tag_is_rejected():
    with pytest.raises(ValueError, match="neither a checkpoint file nor an open_clip tag"):
        load_clip("uir-tiny-clip", pretrained="no-such-tag", model_config=TINY)


def test_custom_configs_register_without_leaving_temp_files(tmp_path, monkeypatch):
    """Each run registers its tiny CLIP again: the config file must not outlive the call, and
    a re-registered name must build the new config."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    wide = {**TINY, "vision_cfg": {**TINY["vision_cfg"], "width": 64}}
    narrow = load_clip("uir-reregistered-clip", pretrained=None, model_config=TINY)
    wider = load_clip("uir-reregistered-clip", pretrained=None, model_config=wide)
    assert list(tmp_path.iterdir()) == []
    assert narrow.model.visual.conv1.out_channels == 32
    assert wider.model.visual.conv1.out_channels == 64
