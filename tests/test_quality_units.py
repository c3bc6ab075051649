"""Quality labelling pieces: config, steps, folds, curation, report, prompt training, CLIP
pretraining, shard access. Tiny random-weight CLIPs; no pretrained weights needed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from uir.dataset.config import ConfigError
from uir.dataset.tarwriter import TarShardWriter
from uir.dataset.verify import iter_samples
from uir.quality.config import CurationRule, load_quality_config
from uir.quality.curation import decide, dropped_record
from uir.quality.job import QualityError, split_overrides
from uir.quality.report import SampleQuality, confusion, histogram_rows, per_type, summarise
from uir.quality.run import resolve_steps
from uir.quality.samples import TarMembers, fold_of
from uir_models.metrics import against_chance
from uir_models.quality.balance import balanced_indices
from uir_models.quality.perceiver import QualityPerceiver, load_clip
from uir_models.quality.prompt_training import (
    PerceiverTrainSettings,
    center_crop,
    score_images,
    train_perceiver,
    triplet_crop,
)

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 16, "patch_size": 8, "head_width": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _params(tmp_path: Path, quality: dict) -> Path:
    path = tmp_path / "params.yaml"
    base = {"output": "o", "work": "w", "models": "m", "reports": "r"}
    path.write_text(yaml.safe_dump({"datasets": {}, "quality": {"d": {**base, **quality}}}))
    return path


def test_quality_config_errors_name_the_key(tmp_path):
    assert load_quality_config("other", _params(tmp_path, {})) is None
    with pytest.raises(ConfigError, match=r"quality\.d\.proxy\.iterationz"):
        load_quality_config("d", _params(tmp_path, {"proxy": {"iterationz": 3}}))
    with pytest.raises(ConfigError, match="overlap"):
        load_quality_config("d", _params(tmp_path, {"render": {"tile": 32, "overlap": 32}}))
    rule = {"name": "a", "tier": "lq", "quality": "excellent", "above": 0.5}
    with pytest.raises(ConfigError, match="unique"):
        load_quality_config("d", _params(tmp_path, {"curation": {"rules": [rule, rule]}}))


def test_section_digests_ignore_devices_but_not_settings(tmp_path):
    config = load_quality_config("d", _params(tmp_path, {}))
    same = config.model_copy(update={"proxy": config.proxy.model_copy(update={"device": "cuda"})})
    other = config.model_copy(update={"proxy": config.proxy.model_copy(update={"lr": 1e-3})})
    assert same.digest_of("proxy") == config.digest_of("proxy")
    assert other.digest_of("proxy") != config.digest_of("proxy")
    assert other.digest_of("curation") == config.digest_of("curation")


def test_steps_and_overrides():
    assert resolve_steps(None, True) == ["base", "proxy", "render", "perceiver", "label"]
    assert resolve_steps(None, False) == ["base"]
    assert resolve_steps(["label", "proxy"], True) == ["proxy", "label"]
    with pytest.raises(QualityError, match="unknown steps"):
        resolve_steps(["proxi"], True)
    with pytest.raises(QualityError, match=r"quality\.<dataset>"):
        resolve_steps(["render"], False)
    assert split_overrides({"seed": 1, "quality.proxy.lr": 2}) == ({"seed": 1}, {"proxy.lr": 2})


def test_folds_are_stable_balanced_and_salted():
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(2000)]
    folds = [fold_of(h, "perceive-ir") for h in hashes]
    assert folds == [fold_of(h, "perceive-ir") for h in hashes]
    assert abs(np.mean(folds) - 0.5) < 4 * 0.5 / np.sqrt(2000)
    assert folds != [fold_of(h, "other") for h in hashes]


def _rule(**fields) -> CurationRule:
    return CurationRule(
        **{"name": "weak", "tier": "lq", "quality": "excellent", "above": 0.8, **fields}
    )


def test_curation_drops_flags_and_explains():
    probabilities = {"lq": [0.05, 0.05, 0.9], "mq": [0.3, 0.3, 0.4], "hq": [0.7, 0.2, 0.1]}
    rules = [
        _rule(),
        _rule(name="bad", tier="hq", quality="terrible", above=0.6, action="flag"),
        _rule(name="never", above=0.95),
    ]
    decision = decide(rules, "train", probabilities)
    assert decision.dropped and decision.flags == ["bad"]
    record = dropped_record("s.tar", "k", "train", ["noisy"], decision)
    assert [r["rule"] for r in record["rules"]] == ["weak"]
    assert (
        record["rules"][0]["probability"] == 0.9
        and "LQ perceived 'excellent'" in (record["rules"][0]["reason"])
    )
    assert not decide([_rule(splits=("val",))], "train", probabilities).findings
    assert not decide([_rule(above=0.9)], "train", probabilities).dropped  # strictly above


def _sample(
    key: str,
    split: str,
    labels: tuple[str, ...],
    predicted: list[int],
    psnr: tuple[float, float] = (20.0, 22.0),
    saw: bool = True,
) -> SampleQuality:
    probabilities = {
        tier: [0.8 if i == p else 0.1 for i in range(3)]
        for tier, p in zip(("lq", "mq", "hq"), predicted, strict=True)
    }
    return SampleQuality(
        key, split, labels, 0, *psnr, probabilities, {label: saw for label in labels}
    )


def test_report_confusion_types_and_histograms():
    samples = [
        _sample("a", "val", ("noisy",), [0, 1, 2]),
        _sample("b", "val", ("noisy", "hazy"), [0, 0, 2], psnr=(10.0, 11.0)),
        _sample("c", "val", ("hazy",), [1, 1, 1], saw=False),
    ]
    matrix, accuracy = confusion(samples)
    assert matrix == [[2, 1, 0], [1, 2, 0], [0, 1, 2]] and accuracy == round(6 / 9, 4)
    table = per_type(samples)
    assert table["noisy"]["samples"] == 2 and table["noisy"]["psnr_gain"] == 1.5
    assert table["hazy"]["psnr_samples"] == 1 and table["hazy"]["psnr_lq"] == 10.0
    assert table["noisy"]["psnr_improved"] == 2
    worse = _sample("d", "val", ("noisy",), [0, 1, 2], psnr=(30.0, 29.0))
    assert per_type([*samples, worse])["noisy"]["psnr_improved"] == 2
    val = summarise([*samples, worse], dropped=0, flagged=0)["val"]
    assert val["accuracy"] == round(9 / 12, 4)
    assert {k: val[k] for k in ("ci95_low", "ci95_high", "p_above_chance")} == against_chance(
        9, 12, 1 / 3
    )
    rows = histogram_rows(samples, "noisy")
    assert [sum(row[i] for row in rows) for i in (1, 2, 3)] == [2, 2, 2]


def test_triplet_crop_keeps_tiers_aligned_and_flips():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
    flips = 0
    for _ in range(12):
        lq, mq, hq = triplet_crop([image, 255 - image, image // 2], 8, rng)
        np.testing.assert_array_equal(mq, 255 - lq)
        np.testing.assert_array_equal(hq, lq // 2)
        windows = np.lib.stride_tricks.sliding_window_view(image, (8, 8, 3))[..., 0, :, :, :]
        plain = (windows == lq).all(axis=(-1, -2, -3)).any()
        flipped = (windows == lq[:, ::-1]).all(axis=(-1, -2, -3)).any()
        assert plain or flipped
        flips += int(flipped and not plain)
    assert 0 < flips < 12
    small = triplet_crop([image[:6, :7]] * 3, 8, rng)  # upscaled to reach the crop
    assert small[0].shape == (8, 8, 3)
    assert center_crop(image, 8).shape == (8, 8, 3)
    with pytest.raises(ValueError, match="differ"):
        triplet_crop([image, image[:10]], 8, rng)


def test_balanced_batches_draw_types_evenly():
    groups = {"common": list(range(90)), "rare": [90, 91]}
    picks = balanced_indices(groups, 4000, np.random.default_rng(1))
    rare = np.mean([p >= 90 for p in picks])
    assert abs(rare - 0.5) < 0.05


class _Triplets:
    """Colour-coded tiers: bad red, medium green, good blue; two degradation types."""

    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.items = []
        for i in range(n):
            noise = rng.integers(0, 40, (20, 20, 3))
            tiers = []
            for channel in range(3):
                image = noise.copy()
                image[..., channel] += 200
                tiers.append(image.clip(0, 255).astype(np.uint8))
            self.items.append((tuple(tiers), ("noisy",) if i % 4 else ("hazy",)))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index][0]

    def labels(self, index: int):
        return self.items[index][1]


def _tiny_perceiver() -> QualityPerceiver:
    torch.manual_seed(0)
    bundle = load_clip("uir-unit-clip", pretrained=None, model_config=TINY)
    return QualityPerceiver(bundle, n_ctx=4, generator=torch.Generator().manual_seed(1))


def test_prompt_training_resumes_exactly_and_learns(tmp_path):
    data = _Triplets(16, 0)
    settings = PerceiverTrainSettings(
        iterations=30, batch_size=4, lr=3e-2, crop=16, checkpoint_every=10, seed=3, device="cpu"
    )
    straight = _tiny_perceiver()
    full = train_perceiver(straight, data, settings, tmp_path / "a.pt")
    resumed = _tiny_perceiver()
    first = train_perceiver(resumed, data, settings, tmp_path / "b.pt", stop_after=13)
    assert len(first.losses) == 13
    second = train_perceiver(_tiny_perceiver(), data, settings, tmp_path / "b.pt")
    assert second.resumed_from == 13 and second.losses == full.losses
    # a completed checkpoint does no more work; other settings start over
    again = train_perceiver(_tiny_perceiver(), data, settings, tmp_path / "b.pt")
    assert again.resumed_from == 30 and again.losses == full.losses
    changed = PerceiverTrainSettings(**{**settings.__dict__, "lr": 1e-2})
    assert (
        train_perceiver(
            _tiny_perceiver(), data, changed, tmp_path / "b.pt", stop_after=2
        ).resumed_from
        == 0
    )
    probabilities = score_images(straight, [t for i in range(8) for t in data[i]], crop=16)
    assert probabilities.shape == (24, 3)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)
    accuracy = np.mean(probabilities.argmax(1) == np.tile([0, 1, 2], 8))
    assert accuracy > 0.8


def test_unreadable_prompt_checkpoint_is_an_error(tmp_path):
    (tmp_path / "c.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="unreadable"):
        train_perceiver(
            _tiny_perceiver(),
            _Triplets(4, 0),
            PerceiverTrainSettings(iterations=2, batch_size=2, crop=16, device="cpu"),
            tmp_path / "c.pt",
        )


def test_tar_members_read_what_iter_samples_groups(tmp_path):
    writer = TarShardWriter(tmp_path / "s.tar")
    for key in ("a", "b"):
        writer.write(key, {"hq.png": key.encode() * 700, "json": b"{}", "txt": b""})
    writer.close()
    members = TarMembers(tmp_path / "s.tar")
    for key, grouped in iter_samples(tmp_path / "s.tar"):
        assert members.read(key, list(grouped)) == grouped


def test_psnr_loss_is_the_mean_negative_psnr_per_sample():
    from uir_models.losses import PSNR_LOSS_FLOOR
    from uir_models.quality.proxy import restoration_loss

    target = torch.zeros(2, 3, 4, 4)
    pred = torch.stack([torch.full((3, 4, 4), 0.1), torch.full((3, 4, 4), 0.01)])
    mses = np.array([0.01, 0.0001])  # 20 dB and 40 dB
    psnrs = -10 * np.log10(mses + PSNR_LOSS_FLOOR)
    assert float(restoration_loss(pred, target, "psnr")) == pytest.approx(-np.mean(psnrs), 1e-4)
    assert float(restoration_loss(pred, target, "l1")) == pytest.approx(0.055)
    with pytest.raises(ValueError, match="unknown pixel loss"):
        restoration_loss(pred, target, "l2")


def test_psnr_loss_saturates_so_a_clean_crop_cannot_dominate_the_gradient():
    """A flat, nearly clean crop (MSE 1e-8) once gave a gradient 1e4x the others; Adam's second
    moment then froze the proxy at the identity for the rest of training."""
    from uir_models.losses import restoration_loss

    target = torch.zeros(2, 3, 8, 8)
    pred = torch.stack([torch.full((3, 8, 8), 1e-4), torch.full((3, 8, 8), 0.1)])
    pred.requires_grad_(True)
    loss = restoration_loss(pred, target, "psnr")
    loss.backward()
    clean, degraded = pred.grad.abs().amax(dim=(1, 2, 3))
    assert torch.isfinite(loss) and float(loss.detach()) > -60  # about -(40 + 20) / 2 dB
    assert clean < degraded, (float(clean), float(degraded))


def test_config_names_the_perceivers_classes():
    from typing import get_args

    from uir.quality.config import QualityClass
    from uir_models.quality import QUALITY_CLASSES

    assert get_args(QualityClass) == QUALITY_CLASSES  # pydantic needs the literal spelt out


def test_config_loss_names_are_pixel_losses():
    """The params configs spell the loss names out (so reading params does not import torch);
    they must stay names that uir_models.losses knows."""
    from typing import get_args

    from uir.quality.config import ProxyConfig
    from uir.training.config import RestorerSection
    from uir_models.losses import PIXEL_LOSSES

    assert set(get_args(RestorerSection.model_fields["pixel_loss"].annotation)) == set(PIXEL_LOSSES)
    assert set(get_args(ProxyConfig.model_fields["loss"].annotation)) <= set(PIXEL_LOSSES)
