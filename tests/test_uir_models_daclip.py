"""DA-CLIP controller on the tiny random-weight config: zero-init controls, frozen CLIP, control
order, losses without the reference's log(batch/10) floor, release checkpoints, factory."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from degradations.names import DACLIP_TYPES
from uir_models.archs.daclip import (
    DaCLIP,
    DaClipConfig,
    DaClipOutput,
    floor_free_cross_entropy,
    load_daclip_checkpoint,
)
from uir_models.factory import create_model, list_models
from uir_models.quality.perceiver import WeightsUnavailableError

TOY_TYPES = ["hazy", "noisy"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(seed: int = 0, **overrides) -> DaCLIP:
    torch.manual_seed(seed)
    return create_model("daclip-tiny", overrides=overrides)


def perturb(model: DaCLIP, seed: int = 1) -> DaCLIP:
    """Non-zero controls and a controller that differs from CLIP, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in [*model.controls.parameters(), *model.controller.parameters()]:
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        model.logit_scale.fill_(math.log(50.0))
    return model


def toy_batch(n: int, seed: int) -> tuple[torch.Tensor, list[list[str]], list[str]]:
    """Half hazy (smooth, washed out), half noisy (grain): a separable two-type task."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    smooth = torch.stack([yy, xx, (yy + xx) / 2])
    phase = torch.rand(n, 3, 1, 1, generator=g)
    base = (smooth[None] * 0.5 + phase * 0.5).clamp(0, 1)
    half = n // 2
    hazy = 0.6 + 0.35 * base[:half]
    noisy = base[half:] + 0.3 * torch.randn(n - half, 3, 64, 64, generator=g)
    images = torch.cat([hazy, noisy]).clamp(0, 1)
    labels = [["hazy"]] * half + [["noisy"]] * (n - half)
    captions = [f"a photo number {i}" for i in range(n)]
    return images, labels, captions


def manual_content(model: DaCLIP, x: torch.Tensor, order: str) -> torch.Tensor:
    """The controlled forward written out block by block, independently of the hooks."""
    ctrl, frozen = model.controller, model.clip.visual
    h = ctrl._embeds(x)
    controls = []
    for block, proj in zip(ctrl.transformer.resblocks, model.controls, strict=True):
        h = block(h)
        controls.append(proj(h))
    if order == "reference":
        controls = controls[::-1]
    y = frozen._embeds(x)
    for block, control in zip(frozen.transformer.resblocks, controls, strict=True):
        y = block(y) + control
    pooled, _ = frozen._pool(y)
    return F.normalize(pooled @ frozen.proj, dim=-1)


def test_factory_lists_and_builds_both_sizes():
    assert {"daclip-tiny", "daclip-vit-b-32"} <= set(list_models())
    model = tiny()
    assert isinstance(model, DaCLIP)
    assert model.degradation_types == tuple(str(t) for t in DACLIP_TYPES)
    assert model.config.control_order == "reference"
    assert model.image_size == (64, 64) and len(model.controls) == 2
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 154_624 + 2 * (64 * 64 + 64) + 1  # tower copy + controls + logit scale
    paper = create_model("daclip-vit-b-32", overrides={"pretrained": None})  # random ViT-B-32
    assert len(paper.controls) == 12
    assert all(
        p.in_features == p.out_features == 768 and p.bias is not None for p in paper.controls
    )
    assert paper.image_size == (224, 224)
    n_all = sum(p.numel() for p in paper.parameters())
    n_train = sum(p.numel() for p in paper.parameters() if p.requires_grad)
    assert (n_all, n_train) == (246_213_634, 94_936_321)  # CLIP 151.3M + tower 87.8M + controls


def test_config_rejects_typos_and_bad_choices():
    with pytest.raises(ValueError, match="unknown DA-CLIP config keys"):
        DaClipConfig.from_dict({"control_ordr": "reference"})
    with pytest.raises(ValueError, match="control_order"):
        DaClipConfig.from_dict({"control_order": "backwards"})
    with pytest.raises(ValueError, match="degradation_loss"):
        DaClipConfig.from_dict({"degradation_loss": "infonce"})
    with pytest.raises(ValueError, match="unique"):
        DaClipConfig.from_dict({"degradation_types": ["hazy", "hazy"]})


def test_zero_init_content_is_frozen_clip_embedding():
    model = tiny()
    images = torch.rand(3, 3, 80, 72)  # any size: resized and centre-cropped to 64
    out = model(images)
    with torch.no_grad():
        clip_emb = F.normalize(model.clip.encode_image(model.preprocess(images)), dim=-1)
    torch.testing.assert_close(out.content, clip_emb, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.degradation, clip_emb, atol=1e-6, rtol=0)  # a copy at init
    assert all(float(p.detach().abs().max()) == 0 for p in model.controls.parameters())
    assert torch.allclose(out.content.norm(dim=-1), torch.ones(3))


@pytest.mark.parametrize("order", ["reference", "aligned"])
def test_control_order(order: str):
    model = perturb(tiny(control_order=order))
    x = model.preprocess(torch.rand(2, 3, 64, 64))
    with torch.no_grad():
        content, _ = model.encode_image(x, preprocess=False)
        want = manual_content(model, x, order)
        other = manual_content(model, x, "aligned" if order == "reference" else "reference")
    torch.testing.assert_close(content, want, atol=1e-5, rtol=0)
    assert (content - other).abs().max() > 1e-3  # the two orders really differ


def test_only_controller_controls_and_logit_scale_train():
    model = tiny()
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names, "nothing trains"
    assert all(n.startswith(("controller.", "controls.")) or n == "logit_scale" for n in names)
    assert not any(p.requires_grad for p in model.clip.parameters())
    model.train()
    assert model.controller.training and not model.clip.training


def test_training_steps_reduce_degradation_loss_below_the_reference_floor():
    model = tiny(degradation_types=TOY_TYPES)
    frozen_before = copy.deepcopy(model.clip.state_dict())
    images, labels, captions = toy_batch(16, seed=0)
    targets = model.label_targets(labels)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-3, betas=(0.9, 0.98), eps=1e-6)
    model.train()
    history = []
    for _ in range(25):
        parts = model.loss(model(images, captions), targets)
        optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        optimizer.step()
        history.append(float(parts["degradation_loss"].detach()))
    model.eval()
    with torch.no_grad():
        final = float(model.loss(model(images, captions), targets)["degradation_loss"])
    assert final < 0.5 * history[0], history
    # The reference's plain InfoNCE cannot go below log(batch / number of types) here.
    assert final < 0.25 * math.log(16 / 2), (final, history)
    after = model.clip.state_dict()
    assert all(torch.equal(frozen_before[k], after[k]) for k in frozen_before)
    assert any(float(p.detach().abs().max()) > 0 for p in model.controls.parameters())
    held_out, held_labels, _ = toy_batch(16, seed=1)
    predicted = model.classify(held_out).argmax(-1)
    truth = model.label_targets(held_labels).argmax(-1)
    assert float((predicted == truth).float().mean()) >= 0.8  # chance: 0.5


@pytest.mark.parametrize("kind", ["cross_entropy", "multi_positive"])
def test_degradation_loss_is_zero_at_the_optimum_for_any_batch(kind: str):
    """Embeddings on their type texts: our loss ~0, the reference's InfoNCE >= log(B/K)."""
    model = tiny(degradation_types=TOY_TYPES, degradation_loss=kind)
    types = model.type_features()
    batch = 40
    targets = torch.zeros(batch, 2)
    targets[: batch // 2, 0] = 1
    targets[batch // 2 :, 1] = 1
    embeddings = targets @ types
    scale = torch.tensor(100.0)
    out = DaClipOutput(content=embeddings, degradation=embeddings, logit_scale=scale)
    loss = float(model.degradation_loss(out, targets))
    assert loss < 1e-3, loss
    # The reference: every sample against every sample's degradation text, only itself positive.
    logits = scale * embeddings @ embeddings.t()
    reference = 0.5 * (
        F.cross_entropy(logits, torch.arange(batch))
        + F.cross_entropy(logits.t(), torch.arange(batch))
    )
    assert float(reference) >= math.log(batch / 2) - 1e-3


def test_mixed_labels_are_soft_targets():
    model = tiny(degradation_types=TOY_TYPES)
    types = model.type_features()
    mixed = F.normalize(types.sum(0, keepdim=True), dim=-1)  # equally close to both types
    targets = torch.tensor([[1.0, 1.0]])
    out = DaClipOutput(content=mixed, degradation=mixed, logit_scale=torch.tensor(100.0))
    assert float(model.degradation_loss(out, targets)) < 1e-4
    one_sided = DaClipOutput(content=types[:1], degradation=types[:1], logit_scale=out.logit_scale)
    assert float(model.degradation_loss(one_sided, targets)) > 0.5
    # The formula: KL from the normalised targets, rows without labels skipped.
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 5.0]])
    weights = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    p = torch.tensor([0.5, 0.5, 0.0])
    q = logits[0].softmax(-1)
    want = float((p[:2] * (p[:2].log() - q[:2].log())).sum())
    assert float(floor_free_cross_entropy(logits, weights)) == pytest.approx(want, abs=1e-6)


def test_content_loss_counts_identical_captions_as_matches():
    model = tiny()
    captions = ["a red car", "a cat on a sofa", "a red car", "two dogs"]
    features = model.encode_text(captions)
    out = DaClipOutput(
        content=features,
        degradation=features,
        logit_scale=torch.tensor(100.0),
        caption_features=features,
        caption_tokens=model.tokenize(captions),
    )
    assert float(model.content_loss(out)) < 1e-3
    with pytest.raises(ValueError, match="needs captions"):
        model.content_loss(DaClipOutput(features, features, out.logit_scale))


def test_label_targets_and_classify():
    model = tiny()
    targets = model.label_targets([["hazy"], ["noisy", "rainy"], ["blurry"]], ignore_unknown=True)
    assert targets.shape == (3, 10)
    assert targets[0, model.degradation_types.index("hazy")] == 1
    assert float(targets[1].sum()) == 2 and float(targets[2].sum()) == 0
    with pytest.raises(ValueError, match="not a degradation type"):
        model.label_targets([["blurry"]])
    probs = model.classify(torch.rand(5, 3, 64, 64))
    assert probs.shape == (5, 10)
    torch.testing.assert_close(probs.sum(-1), torch.ones(5))


class _ReleaseControlTransformer(nn.Module):
    """The release's wrapper: its blocks under ``transformer``, controls as ``zero_modules``."""

    def __init__(self, transformer: nn.Module, zero_modules: nn.ModuleList) -> None:
        super().__init__()
        self.transformer = transformer
        self.zero_modules = zero_modules


class _ReleaseDaCLIP(nn.Module):
    """The module layout of the released DA-CLIP, so its state_dict has the release's names."""

    def __init__(self, model: DaCLIP) -> None:
        super().__init__()
        self.clip = model.clip
        self.visual = model.clip.visual
        self.visual_control = copy.deepcopy(model.controller)
        self.visual_control.transformer = _ReleaseControlTransformer(
            self.visual_control.transformer, copy.deepcopy(model.controls)
        )
        self.logit_scale = model.logit_scale


def test_release_checkpoint_loads(tmp_path):
    source = perturb(tiny(seed=5))
    release = _ReleaseDaCLIP(source).state_dict()
    assert "visual_control.transformer.zero_modules.1.bias" in release
    assert "visual_control.transformer.transformer.resblocks.0.ln_1.weight" in release
    assert "visual.conv1.weight" in release and "clip.visual.conv1.weight" in release
    path = tmp_path / "daclip_tiny.pt"  # an open_clip training checkpoint saved from DDP
    torch.save({"epoch": 30, "state_dict": {f"module.{k}": v for k, v in release.items()}}, path)

    target = tiny(seed=9)
    load_daclip_checkpoint(target, path)
    want, got = source.state_dict(), target.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(target.encode_image(images), source.encode_image(images))

    # Through the factory: the checkpoint supplies CLIP too, so the tag is never fetched.
    built = create_model("daclip-tiny", overrides={"checkpoint": str(path)})
    assert torch.equal(built.controls[0].weight, source.controls[0].weight)

    own = tmp_path / "ours.pt"  # our own state dict loads the same way
    torch.save(source.state_dict(), own)
    load_daclip_checkpoint(tiny(seed=3), own)


def test_bad_checkpoints_fail_clearly(tmp_path):
    model = tiny()
    release = _ReleaseDaCLIP(model).state_dict()
    partial = {k: v for k, v in release.items() if "zero_modules" not in k}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=r"missing: controls\.0\.bias"):
        load_daclip_checkpoint(model, tmp_path / "partial.pt")
    wrong = dict(release)
    wrong["visual_control.transformer.zero_modules.0.weight"] = torch.zeros(8, 8)
    wrong["extra.weight"] = torch.zeros(1)
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match=r"unexpected: extra\.weight.*shape mismatch: controls"):
        load_daclip_checkpoint(model, tmp_path / "wrong.pt")
    with pytest.raises(FileNotFoundError):
        load_daclip_checkpoint(model, tmp_path / "absent.pt")


def test_unavailable_pretrained_tag_raises(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-uir-cache")
    with pytest.raises(WeightsUnavailableError, match="laion2b_s34b_b79k"):
        create_model("daclip-vit-b-32")
