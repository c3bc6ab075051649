"""Proxy restorer training loop: batches, exact resume, checkpoints, learning, rendering."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from uir_models.factory import create_model
from uir_models.quality.proxy import (
    ProxyCheckpointError,
    ProxyTrainSettings,
    TypeConditionedProxy,
    draw_batch,
    load_proxy,
    render_medium,
    train_proxy,
)

# Small enough that a 12-step run takes a fraction of a second.
MICRO = {"arch": "nafnet", "width": 4, "enc_blocks": [1], "middle_blocks": 0, "dec_blocks": [1]}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _photo(rng: np.random.Generator, h: int = 48, w: int = 48) -> np.ndarray:
    """Smooth gradient plus flat rectangles: structure a denoiser can tell from noise."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([yy, xx, (yy + xx) / 2], -1) * rng.uniform(0.3, 0.8, 3) + rng.uniform(0, 0.3, 3)
    for _ in range(3):
        y0, x0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
        img[y0 : y0 + rng.integers(6, 20), x0 : x0 + rng.integers(6, 20)] = rng.uniform(0, 1, 3)
    return np.clip(img * 255, 0, 255).round().astype(np.uint8)


def _noisy_pairs(
    n: int, seed: int, h: int = 48, w: int = 48
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(LQ, HQ) with fixed additive Gaussian noise, sigma 20 levels: a learnable degradation."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        hq = _photo(rng, h, w)
        lq = np.clip(hq + rng.normal(0, 20, hq.shape), 0, 255).round().astype(np.uint8)
        pairs.append((lq, hq))
    return pairs


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def _settings(**kw: object) -> ProxyTrainSettings:
    base = {
        "model": MICRO,
        "iterations": 12,
        "batch_size": 2,
        "patch_size": 32,
        "lr": 2e-3,
        "min_lr": 2e-5,
        "checkpoint_every": 5,
        "device": "cpu",
    }
    return ProxyTrainSettings(**{**base, **kw})  # type: ignore[arg-type]


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class _CountingPairs:
    """A PairSet that records every access."""

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.pairs, self.reads = pairs, 0

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        self.reads += 1
        return self.pairs[index]


# --------------------------------------------------------------------------- settings


def test_digest_covers_what_changes_the_weights():
    s = _settings()
    assert s.digest() == _settings(device="cuda", amp=False, checkpoint_every=1).digest()
    for change in ({"seed": 1}, {"lr": 1e-3}, {"iterations": 13}, {"model": "nafnet-tiny"}):
        assert _settings(**change).digest() != s.digest(), change
    # YAML-ish spellings of the same settings digest the same ...
    assert _settings(lr=0.002, betas=[0.9, 0.999]).digest() == s.digest()
    # ... and a name digests as the config it stands for.
    tiny = create_model("nafnet-tiny").config
    mapping = {
        "arch": "nafnet",
        "width": tiny.width,
        "enc_blocks": list(tiny.enc_blocks),
        "middle_blocks": tiny.middle_blocks,
        "dec_blocks": list(tiny.dec_blocks),
    }
    assert _settings(model="nafnet-tiny").digest() == _settings(model=mapping).digest()
    for bad in ({"iterations": 0}, {"batch_size": 0}, {"seed": -1}, {"min_lr": 1.0}):
        with pytest.raises(ValueError):
            _settings(**bad)


# --------------------------------------------------------------------------- batches


def _position_pairs(sizes: list[tuple[int, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """HQ encodes each pixel's (y, x) and the image index; LQ is its negative."""
    pairs = []
    for i, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        hq = np.stack([yy, xx, np.full_like(yy, i)], -1).astype(np.uint8)
        pairs.append((255 - hq, hq))
    return pairs


def test_batches_are_pure_aligned_crops_with_all_eight_orientations():
    pairs = _position_pairs([(48, 40), (40, 48), (33, 35)])
    orientations = set()
    for step in range(1, 40):
        lq, hq, indices = draw_batch(pairs, 3, 16, seed=7, step=step)
        assert [int(crop[0, 0, 2]) for crop in hq] == indices  # the pairs it reports
        assert lq.shape == hq.shape == (3, 16, 16, 3) and lq.dtype == np.uint8
        np.testing.assert_array_equal(lq, 255 - hq)  # same box and transform on LQ and HQ
        for crop in hq.astype(int):
            pos = crop[..., :2]  # (y, x) of the source pixel
            assert len(np.unique(crop[..., 2])) == 1  # from one image
            d_row, d_col = pos[1, 0] - pos[0, 0], pos[0, 1] - pos[0, 0]
            r, c = np.mgrid[0:16, 0:16]
            expected = pos[0, 0] + r[..., None] * d_row + c[..., None] * d_col
            np.testing.assert_array_equal(pos, expected)  # a rigid window, no resampling
            orientations.add((*d_row, *d_col))
        again = draw_batch(pairs, 3, 16, seed=7, step=step)
        np.testing.assert_array_equal(again[1], hq)  # a pure function of (seed, step)
    assert len(orientations) == 8  # flips x rot90 give the whole dihedral group
    other = draw_batch(pairs, 3, 16, seed=8, step=1)[1]
    assert not np.array_equal(other, draw_batch(pairs, 3, 16, seed=7, step=1)[1])


def test_pairs_smaller_than_the_patch_shrink_the_batch(tmp_path):
    pairs = _position_pairs([(20, 24), (48, 48), (48, 48)])
    sizes = {draw_batch(pairs, 2, 32, seed=0, step=s)[0].shape[1] for s in range(1, 30)}
    assert sizes == {20, 32}  # a batch holding the small pair crops to its short side
    small = _noisy_pairs(2, seed=0, h=20, w=24)
    result = train_proxy(small, _settings(iterations=3, patch_size=128), tmp_path / "p.pt")
    assert len(result.losses) == 3 and all(np.isfinite(result.losses))


class _Labelled(list):
    """Pairs that name their type: 18 "common" ones, then 2 "rare" ones."""

    def labels(self, index: int) -> tuple[str, ...]:
        return ("rare",) if index >= 18 else ("common",)


def test_type_balanced_batches_draw_rare_types_as_often_as_common_ones(tmp_path):
    pairs = _Labelled(_position_pairs([(24, 24)] * 20))
    groups = {"common": list(range(18)), "rare": [18, 19]}
    image_ids = [
        int(crop[0, 0, 2])
        for step in range(1, 200)
        for crop in draw_batch(pairs, 4, 16, seed=3, step=step, groups=groups)[1]
    ]
    assert abs(np.mean([i >= 18 for i in image_ids]) - 0.5) < 0.06  # uniform: 0.1
    uniform = [
        int(crop[0, 0, 2])
        for step in range(1, 200)
        for crop in draw_batch(pairs, 4, 16, seed=3, step=step)[1]
    ]
    assert np.mean([i >= 18 for i in uniform]) < 0.2
    balanced = _settings(balance="types")
    assert balanced.digest() != _settings().digest()
    result = train_proxy(pairs, _settings(balance="types", iterations=2), tmp_path / "b.pt")
    assert len(result.losses) == 2
    with pytest.raises(ValueError, match="labels"):
        train_proxy(list(pairs), balanced, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="balance"):
        _settings(balance="photos")


def test_channel_shuffle_permutes_lq_and_hq_alike_and_only_when_asked():
    pairs = _position_pairs([(40, 40)])
    hq_plain = draw_batch(pairs, 6, 16, seed=2, step=1)[1]
    orders = set()
    for step in range(1, 30):
        lq, hq, _ = draw_batch(pairs, 6, 16, seed=2, step=step, channel_shuffle=True)
        np.testing.assert_array_equal(lq, 255 - hq)  # one permutation for both
        for crop in hq:
            constant = [c for c in range(3) if len(np.unique(crop[..., c])) == 1]
            assert len(constant) == 1  # the image-index channel moved, never duplicated
            orders.add(constant[0])
    assert orders == {0, 1, 2}
    assert all(len(np.unique(crop[..., 2])) == 1 for crop in hq_plain)  # off: RGB as stored


def test_bad_pairs_name_the_index(tmp_path):
    good = _noisy_pairs(2, seed=0)
    with pytest.raises(ValueError, match="empty"):
        train_proxy([], _settings(), tmp_path / "p.pt")
    mismatched = [*good, (good[0][0][:40], good[0][1])]
    with pytest.raises(ValueError, match="pair 2"):
        draw_batch(mismatched, 16, 32, seed=0, step=1)
    with pytest.raises(ValueError, match="uint8"):
        draw_batch([(good[0][0].astype(np.float32), good[0][1])], 1, 32, seed=0, step=1)


# --------------------------------------------------------------------------- checkpoints


def test_interrupted_run_resumes_exactly(tmp_path):
    pairs = _noisy_pairs(6, seed=1)
    settings = _settings()
    full = train_proxy(pairs, settings, tmp_path / "full.pt")
    assert len(full.losses) == 12 and full.resumed_from == 0 and full.steps_per_second > 0
    assert full.model.training is False
    assert full.losses[-1] != full.losses[0]  # it trained: the identity's loss moved

    ckpt = tmp_path / "split.pt"
    seen: list[tuple[int, int, float]] = []

    def progress(step: int, total: int, loss: float) -> None:
        seen.append((step, total, loss))
        if step == 6:  # a periodic checkpoint (every 5 steps) is on disk mid-run
            assert torch.load(ckpt, weights_only=True)["step"] == 5

    first = train_proxy(pairs, settings, ckpt, progress=progress, stop_after=7)
    assert len(first.losses) == 7 and first.resumed_from == 0
    assert torch.load(ckpt, weights_only=True)["step"] == 7  # written when the call ends
    second = train_proxy(pairs, settings, ckpt, progress=progress)
    assert second.resumed_from == 7
    assert second.losses == full.losses  # history restored, batches and updates identical
    assert _same_weights(second.model, full.model)
    assert [s for s, _, _ in seen] == list(range(1, 13))  # 12 iterations: every step is 1%
    assert seen[-1] == (12, 12, full.losses[-1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.pt", "split.pt"]  # no temp files

    loaded = load_proxy(ckpt, device="cpu")  # rebuilt from the config in the checkpoint
    assert loaded.training is False and loaded.config.width == MICRO["width"]
    assert _same_weights(loaded, full.model)


def test_completed_checkpoint_does_no_work(tmp_path):
    pairs = _CountingPairs(_noisy_pairs(4, seed=2))
    ckpt = tmp_path / "p.pt"
    done = train_proxy(pairs, _settings(iterations=6), ckpt)
    before = (ckpt.read_bytes(), ckpt.stat().st_mtime_ns)
    pairs.reads = 0
    again = train_proxy(pairs, _settings(iterations=6), ckpt, progress=pytest.fail)
    assert pairs.reads == 0 and again.resumed_from == 6 and again.steps_per_second == 0.0
    assert again.losses == done.losses and _same_weights(again.model, done.model)
    assert (ckpt.read_bytes(), ckpt.stat().st_mtime_ns) == before


def test_changed_settings_or_data_restart_and_run_settings_resume(tmp_path, caplog):
    pairs = _noisy_pairs(4, seed=3)
    ckpt = tmp_path / "p.pt"
    train_proxy(pairs, _settings(iterations=6), ckpt, stop_after=3)
    # device and checkpoint cadence do not change what is computed: resume
    resumed = train_proxy(pairs, _settings(iterations=6, checkpoint_every=2), ckpt, stop_after=1)
    assert resumed.resumed_from == 3 and len(resumed.losses) == 4
    with caplog.at_level(logging.WARNING, logger="uir_models.quality.proxy"):
        fresh = train_proxy(pairs, _settings(iterations=6, lr=1e-3), ckpt)
    assert fresh.resumed_from == 0 and len(fresh.losses) == 6
    assert "starting over" in caplog.text and str(ckpt) in caplog.text
    state = torch.load(ckpt, weights_only=True)
    assert state["digest"] == _settings(iterations=6, lr=1e-3).digest() and state["step"] == 6
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="uir_models.quality.proxy"):
        other_data = train_proxy(pairs[:3], _settings(iterations=6, lr=1e-3), ckpt)
    assert other_data.resumed_from == 0 and "starting over" in caplog.text


def test_unreadable_checkpoint_is_an_error_naming_the_file(tmp_path):
    pairs = _noisy_pairs(2, seed=4)
    ckpt = tmp_path / "broken.pt"
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(ProxyCheckpointError, match=r"broken\.pt"):
        train_proxy(pairs, _settings(), ckpt)
    with pytest.raises(ProxyCheckpointError, match=r"broken\.pt"):
        load_proxy(ckpt, device="cpu")
    assert ckpt.read_bytes() == b"not a checkpoint"  # left for a person to look at
    torch.save({"weights": torch.zeros(2)}, ckpt)
    with pytest.raises(ProxyCheckpointError, match="not a proxy restorer checkpoint"):
        train_proxy(pairs, _settings(), ckpt)
    train_proxy(pairs, _settings(iterations=2), ckpt.with_name("ok.pt"))
    state = torch.load(ckpt.with_name("ok.pt"), weights_only=True)
    torch.save({**state, "format": 99}, ckpt)
    with pytest.raises(ProxyCheckpointError, match="format 99"):
        load_proxy(ckpt, device="cpu")


# --------------------------------------------------------------------------- learning


def test_learns_denoising_and_beats_the_lq_on_held_out_images(tmp_path):
    train, held_out = _noisy_pairs(8, seed=5), _noisy_pairs(4, seed=6)
    settings = _settings(model="nafnet-tiny", iterations=200, batch_size=4, checkpoint_every=1000)
    reported: list[int] = []
    result = train_proxy(train, settings, tmp_path / "p.pt", lambda s, t, loss: reported.append(s))
    assert reported == list(range(2, 201, 2))  # about every 1% of 200 steps
    losses = result.losses
    assert np.mean(losses[-20:]) < 0.7 * np.mean(losses[:20]), losses[::20]
    # Measured: LQ 22.2 dB -> restored 27.9 dB; L1 0.057 -> 0.026 (first vs last 20 steps).
    lq_psnr = np.mean([_psnr(lq, hq) for lq, hq in held_out])
    restored = [render_medium(result.model, lq) for lq, _ in held_out]
    out_psnr = np.mean([_psnr(out, hq) for out, (_, hq) in zip(restored, held_out, strict=True)])
    assert out_psnr > lq_psnr + 2.0, (lq_psnr, out_psnr)
    reloaded = load_proxy(tmp_path / "p.pt", device="cpu")
    np.testing.assert_array_equal(render_medium(reloaded, held_out[0][0]), restored[0])


class _Opposite(list):
    """Pairs whose type alone says which way to fix them: the LQs of both types look alike
    (levels 40-215), the HQ of a "dark" one is 40 levels brighter, of a "bright" one 40
    darker. A blind proxy can only split the difference."""

    def labels(self, index: int) -> tuple[str, ...]:
        return ("dark",) if index % 2 == 0 else ("bright",)


def _opposite_pairs(n: int, seed: int) -> _Opposite:
    rng = np.random.default_rng(seed)
    pairs = _Opposite()
    for index in range(n):
        lq = (40 + _photo(rng, 32, 32).astype(np.int16) * 175 // 255).astype(np.uint8)
        shift = 40 if index % 2 == 0 else -40
        pairs.append((lq, (lq.astype(np.int16) + shift).astype(np.uint8)))
    return pairs


def test_a_type_conditioned_proxy_undoes_what_each_type_did(tmp_path):
    train, held_out = _opposite_pairs(8, seed=1), _opposite_pairs(4, seed=2)
    typed = _settings(model="nafnet-typed-tiny", condition="types", iterations=150,
                      batch_size=4, patch_size=32, lr=2e-3, checkpoint_every=1000)
    result = train_proxy(train, typed, tmp_path / "typed.pt")
    assert isinstance(result.model, TypeConditionedProxy)
    assert result.model.types == ("bright", "dark")
    blind = train_proxy(train, _settings(model="nafnet-tiny", iterations=150, batch_size=4,
                                         patch_size=32, lr=2e-3), tmp_path / "blind.pt")
    gains = {"typed": [], "blind": []}
    for index, (lq, hq) in enumerate(held_out):
        labels = held_out.labels(index)
        for name, model in (("typed", result.model), ("blind", blind.model)):
            out = render_medium(model, lq, tile=16, overlap=8, labels=labels)
            gains[name].append(_psnr(out, hq) - _psnr(lq, hq))
    # Measured: typed +16 to +20 dB on each held-out image, blind -2 to +3 (mean +0.3).
    assert min(gains["typed"]) > 10.0 and np.mean(gains["blind"]) < 3.0, gains
    reloaded = load_proxy(tmp_path / "typed.pt", device="cpu")
    assert isinstance(reloaded, TypeConditionedProxy) and reloaded.types == ("bright", "dark")
    lq = held_out[0][0]
    np.testing.assert_array_equal(
        render_medium(reloaded, lq, labels=("dark",)),
        render_medium(result.model, lq, labels=("dark",)),
    )
    # A type it never trained on adds nothing to the condition: the same as no labels.
    np.testing.assert_array_equal(
        render_medium(reloaded, lq, labels=("dark", "foggy")),
        render_medium(reloaded, lq, labels=("dark",)),
    )
    assert typed.digest() != _settings(model="nafnet-typed-tiny", condition="types",
                                       balance="types").digest()
    with pytest.raises(ValueError, match="labels"):
        train_proxy(list(train), typed, tmp_path / "unlabelled.pt")
    with pytest.raises(ValueError, match="conditioned model"):
        _settings(condition="types")  # MICRO is a blind NAFNet
    with pytest.raises(ValueError, match="blind one"):
        _settings(model="nafnet-typed-tiny")  # it needs the types it is conditioned on
    with pytest.raises(ValueError, match="content_attention"):
        _settings(model="nafnet-daclip-tiny", condition="types")  # wants a content embedding
    with pytest.raises(ValueError, match="condition"):
        _settings(condition="photos")


# --------------------------------------------------------------------------- rendering


def test_render_medium_keeps_shape_and_identity_is_exact():
    lq = np.random.default_rng(7).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    identity = create_model("nafnet-tiny").eval()  # zero-initialised output: f(x) = x
    for tile, overlap in [(512, 32), (16, 8)]:  # one tile, and many blended ones
        out = render_medium(identity, lq, tile=tile, overlap=overlap)
        assert out.shape == lq.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out, lq)
    torch.manual_seed(0)
    changed = create_model("nafnet-tiny").eval()
    torch.nn.init.normal_(changed.ending.weight, 0, 0.1)
    assert not np.array_equal(render_medium(changed, lq), lq)
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        render_medium(identity, lq.astype(np.float32))
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        render_medium(identity, lq[..., 0])


def test_settings_digest_follows_the_psnr_floor(monkeypatch):
    """A proxy checkpoint trained under another PSNR floor optimised another loss."""
    before = _settings(loss="psnr").digest()
    monkeypatch.setattr("uir_models.losses.PSNR_LOSS_FLOOR", 1e-5)
    assert _settings(loss="psnr").digest() != before
    assert _settings(loss="psnr").digest() == _settings(loss="psnr").digest()
