"""Sampling statistics of the planners against shared/specs/realesrgan.md and tip.md.

Plans are drawn (not executed) for thousands of seeds; proportions must lie within ~4.5
binomial standard errors of the spec, continuous draws must pass a KS test for the spec's
uniform range. Seeds are fixed, so the outcome is deterministic.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import pytest
from scipy import stats

import degradations
from degradations.config import build_config
from degradations.names import BLIND_PROMPT
from degradations.registry import get_pipeline
from degradations.seeding import generator

N_PLANS = 6000
SHAPE = (4000, 3000)  # large so that resize factors can be read back from sizes
ODD = list(range(7, 22, 2))
PI = math.pi
NON_SINC_PROBS = {
    "iso": 0.45,
    "aniso": 0.25,
    "generalized_iso": 0.12,
    "generalized_aniso": 0.03,
    "plateau_iso": 0.12,
    "plateau_aniso": 0.03,
}
TIP_ORDER = ["blurry", "low-resolution", "noisy", "jpeg-compressed"]
TIP_RANGES = {
    "blurry": ("sigma", 0.2, 3.0, 1),
    "low-resolution": ("factor", 1.0, 4.0, 1),
    "noisy": ("sigma", 0.01, 0.25, 2),
    "jpeg-compressed": ("quality", 30, 95, 0),
}


# ----------------------------------------------------------------------------- helpers
def plans(pipeline: str, n: int, shape: tuple[int, int] = SHAPE, start: int = 0,
          **overrides: Any) -> list:
    spec = get_pipeline(pipeline)
    config = build_config(spec.config_type, overrides)
    return [spec.planner(shape, generator(seed), config) for seed in range(start, start + n)]


def assert_prob(count: int, n: int, p: float, what: str, k: float = 4.5) -> None:
    assert n > 0, what
    se = math.sqrt(p * (1 - p) / n)
    freq = count / n
    assert abs(freq - p) <= k * se, f"{what}: {freq:.4f} over {n}, spec {p} (se {se:.4f})"


def assert_uniform(values: list[float], low: float, high: float, what: str) -> None:
    x = np.asarray(values, dtype=np.float64)
    assert len(x) >= 50, f"{what}: only {len(x)} draws"
    eps = 1e-9 * max(1.0, abs(high))
    assert x.min() >= low - eps and x.max() <= high + eps, (
        f"{what}: draws in [{x.min()}, {x.max()}], spec [{low}, {high}]"
    )
    # the whole range is used, not a sub-range
    gap = 8 * (high - low) / len(x)
    assert x.min() < low + gap and x.max() > high - gap, (
        f"{what}: draws span [{x.min()}, {x.max()}] of [{low}, {high}]"
    )
    p = stats.kstest(x, stats.uniform(loc=low, scale=high - low).cdf).pvalue
    assert p > 1e-4, f"{what}: not uniform on [{low}, {high}] (KS p={p:.2g})"


def assert_uniform_counts(counts: Counter, keys: list, n: int, what: str) -> None:
    assert set(counts) == set(keys), f"{what}: values {sorted(counts)}, spec {keys}"
    for key in keys:
        assert_prob(counts[key], n, 1 / len(keys), f"{what} = {key}")


def split_realesrgan(ops: list[dict[str, Any]]) -> dict[str, Any]:
    """Name the recorded ops of one Real-ESRGAN plan by stage."""
    names = [o["op"] for o in ops]
    parts: dict[str, Any] = {}
    i = 0
    if names[i] == "usm_sharpen":
        parts["usm"] = ops[i]["params"]
        i += 1
    if names[i] == "filter":
        parts["kernel1"] = ops[i]["params"]["kernel"]
        i += 1
    assert names[i : i + 3] in (["resize", "gaussian_noise", "jpeg"],
                                ["resize", "poisson_noise", "jpeg"]), names
    parts["resize1"], parts["noise1"], parts["jpeg1"] = ops[i : i + 3]
    i += 3
    parts["kernel2"] = None
    if names[i] == "filter":
        parts["kernel2"] = ops[i]["params"]["kernel"]
        i += 1
    assert names[i] == "resize" and names[i + 1] in ("gaussian_noise", "poisson_noise"), names
    parts["resize2"], parts["noise2"] = ops[i : i + 2]
    i += 2
    final = names[i : i + 3]
    if final == ["resize", "filter", "jpeg"]:
        parts["order"] = "resize-sinc-jpeg"
        parts["resize3"], sinc, parts["jpeg2"] = ops[i : i + 3]
    else:
        assert final == ["jpeg", "resize", "filter"], names
        parts["order"] = "jpeg-resize-sinc"
        parts["jpeg2"], parts["resize3"], sinc = ops[i : i + 3]
    parts["sinc"] = sinc["params"]["kernel"]
    parts["tail"] = ops[i + 3 :]
    return parts


@pytest.fixture(scope="module")
def resr():
    out = []
    for plan in plans("realesrgan", N_PLANS):
        parts = split_realesrgan(plan.ops)
        parts["info"] = plan.info
        parts["labels"] = plan.labels
        parts["prompt"] = plan.prompt
        out.append(parts)
    return out


def kernels_of(resr: list, stage: int) -> list[dict[str, Any]]:
    return [p[f"kernel{stage}"] for p in resr if p[f"kernel{stage}"] is not None]


# ------------------------------------------------------------------ Real-ESRGAN kernels
def test_first_blur_always_second_blur_p08(resr):
    assert all(p.get("kernel1") is not None for p in resr)
    assert_prob(len(kernels_of(resr, 2)), len(resr), 0.8, "second blur")


@pytest.mark.parametrize("stage", [1, 2])
def test_sinc_probability(stage, resr):
    ks = kernels_of(resr, stage)
    assert_prob(sum(k["family"] == "sinc" for k in ks), len(ks), 0.1, f"sinc stage {stage}")


@pytest.mark.parametrize("stage", [1, 2])
def test_family_probabilities(stage, resr):
    ks = [k for k in kernels_of(resr, stage) if k["family"] != "sinc"]
    counts = Counter(k["family"] for k in ks)
    assert set(counts) == set(NON_SINC_PROBS)
    for family, p in NON_SINC_PROBS.items():
        assert_prob(counts[family], len(ks), p, f"stage {stage} {family}")


@pytest.mark.parametrize("stage", [1, 2])
def test_kernel_sizes_uniform_odd(stage, resr):
    ks = kernels_of(resr, stage)
    assert all(isinstance(k["size"], int) for k in ks)
    assert_uniform_counts(Counter(k["size"] for k in ks), ODD, len(ks), f"size stage {stage}")


@pytest.mark.parametrize("stage", [1, 2])
def test_sinc_cutoff_rule(stage, resr):
    sincs = [k for k in kernels_of(resr, stage) if k["family"] == "sinc"]
    small = [k["cutoff"] for k in sincs if k["size"] < 13]
    large = [k["cutoff"] for k in sincs if k["size"] >= 13]
    assert_uniform(small, PI / 3, PI, f"stage {stage} sinc cutoff, size < 13")
    assert_uniform(large, PI / 5, PI, f"stage {stage} sinc cutoff, size >= 13")


@pytest.mark.parametrize(("stage", "high"), [(1, 3.0), (2, 1.5)])
def test_kernel_sigmas_and_rotation(stage, high, resr):
    ks = kernels_of(resr, stage)
    iso = [k["sigma"] for k in ks if k["family"].endswith("iso") and "sigma" in k
           and not k["family"].endswith("aniso")]
    aniso = [k for k in ks if k["family"].endswith("aniso")]
    assert all("sigma" not in k and "theta" in k for k in aniso)
    assert_uniform(iso, 0.2, high, f"stage {stage} iso sigma")
    assert_uniform([k["sigma_x"] for k in aniso], 0.2, high, f"stage {stage} sigma_x")
    assert_uniform([k["sigma_y"] for k in aniso], 0.2, high, f"stage {stage} sigma_y")
    assert_uniform([k["theta"] for k in aniso], -PI, PI, f"stage {stage} theta")
    # sigma_x and sigma_y are drawn independently
    r = np.corrcoef([k["sigma_x"] for k in aniso], [k["sigma_y"] for k in aniso])[0, 1]
    assert abs(r) < 0.1


@pytest.mark.parametrize("stage", [1, 2])
def test_generalized_beta(stage, resr):
    betas = [k["beta"] for k in kernels_of(resr, stage) if k["family"].startswith("generalized")]
    below = [b for b in betas if b < 1]
    assert_prob(len(below), len(betas), 0.5, f"stage {stage} generalized beta < 1", k=5)
    assert_uniform(below, 0.5, 1.0, f"stage {stage} generalized beta below 1")
    above = [b for b in betas if b >= 1]
    assert_uniform(above, 1.0, 4.0, f"stage {stage} generalized beta above 1")


@pytest.mark.parametrize("stage", [1, 2])
def test_plateau_beta(stage, resr):
    betas = [k["beta"] for k in kernels_of(resr, stage) if k["family"].startswith("plateau")]
    ones = [b for b in betas if b == 1.0]
    assert_prob(len(ones), len(betas), 0.5, f"stage {stage} plateau beta == 1", k=5)
    assert_uniform([b for b in betas if b != 1.0], 1.0, 2.0, f"stage {stage} plateau beta")


@pytest.mark.parametrize("stage", [1, 2])
def test_only_shape_kernels_have_beta(stage, resr):
    for k in kernels_of(resr, stage):
        has_beta = k["family"].startswith(("generalized", "plateau"))
        assert ("beta" in k) == has_beta, k


# ------------------------------------------------------------------------ Real-ESRGAN resize
def test_first_resize_direction_and_factor(resr):
    h, w = SHAPE
    up, down, keep = [], [], 0
    for p in resr:
        size = p["resize1"]["params"]["size"]
        fh = size[0] / h
        assert abs(size[1] / w - fh) < 2 / w, f"height and width factors differ: {size}"
        assert size[0] == math.floor(h * fh + 1e-9)
        if size[0] > h:
            up.append(fh)
        elif size[0] < h:
            down.append(fh)
        else:
            assert size == [h, w]
            keep += 1
    n = len(resr)
    assert_prob(len(up), n, 0.2, "first resize up")
    assert_prob(len(down), n, 0.7, "first resize down")
    assert_prob(keep, n, 0.1, "first resize keep")
    assert_uniform(up, 1.0, 1.5, "first up factor")
    assert_uniform(down, 0.15, 1.0, "first down factor")


@pytest.mark.parametrize("scale", [4, 2])
def test_second_resize_direction_relative_to_lr(scale):
    h, w = SHAPE
    lr_h, lr_w = h // scale, w // scale
    up, down, keep = [], [], 0
    found = plans("realesrgan", 3000, scale=scale)
    for plan in found:
        size = split_realesrgan(plan.ops)["resize2"]["params"]["size"]
        f = size[0] / lr_h
        assert abs(size[1] / lr_w - f) < 2 / lr_w, size
        if size[0] > lr_h:
            up.append(f)
        elif size[0] < lr_h:
            down.append(f)
        else:
            keep += 1
    n = len(found)
    assert_prob(len(up), n, 0.3, "second resize up")
    assert_prob(len(down), n, 0.4, "second resize down")
    assert_prob(keep, n, 0.3, "second resize keep")
    assert min(up) > 1.0 and max(up) <= 1.2 + 1e-9 and max(up) > 1.19
    assert 0.3 - 1e-9 <= min(down) < 0.31 and max(down) < 1.0
    p = stats.kstest(down, stats.uniform(loc=0.3, scale=0.7).cdf).pvalue
    assert p > 1e-4, f"second down factor not U(0.3, 1): p={p:.2g}"


@pytest.mark.parametrize("which", ["resize1", "resize2", "resize3"])
def test_resize_modes_uniform(which, resr):
    modes = Counter(p[which]["params"]["mode"] for p in resr)
    assert_uniform_counts(modes, ["area", "bilinear", "bicubic"], len(resr), which)


def test_final_resize_is_to_lr_size(resr):
    for p in resr:
        assert p["resize3"]["params"]["size"] == [SHAPE[0] // 4, SHAPE[1] // 4]
        assert p["tail"] == []


# -------------------------------------------------------------------------- Real-ESRGAN noise
@pytest.mark.parametrize(("stage", "sigma_high", "scale_high"), [(1, 30.0, 3.0), (2, 25.0, 2.5)])
def test_noise(stage, sigma_high, scale_high, resr):
    noises = [p[f"noise{stage}"] for p in resr]
    gaussian = [o["params"] for o in noises if o["op"] == "gaussian_noise"]
    poisson = [o["params"] for o in noises if o["op"] == "poisson_noise"]
    assert len(gaussian) + len(poisson) == len(resr)
    assert_prob(len(gaussian), len(resr), 0.5, f"stage {stage} gaussian noise")
    for kind, params in (("gaussian", gaussian), ("poisson", poisson)):
        assert all(isinstance(q["gray"], bool) for q in params)
        assert_prob(sum(q["gray"] for q in params), len(params), 0.4, f"{kind} gray {stage}")
        seeds = [q["seed"] for q in params]
        assert all(isinstance(s, int) and 0 <= s < 2**64 for s in seeds)
        assert len(set(seeds)) == len(seeds), "noise seeds repeat"
    assert_uniform([q["sigma"] * 255 for q in gaussian], 1.0, sigma_high, f"sigma*255 {stage}")
    assert_uniform([q["scale"] for q in poisson], 0.05, scale_high, f"poisson scale {stage}")


# --------------------------------------------------------------------------- JPEG, final stage
@pytest.mark.parametrize("which", ["jpeg1", "jpeg2"])
def test_jpeg_quality(which, resr):
    qualities = [p[which]["params"]["quality"] for p in resr]
    assert all(type(q) is int for q in qualities)
    assert min(qualities) == 30 and max(qualities) == 95
    assert abs(np.mean(qualities) - 62.5) < 4.5 * 65 / math.sqrt(12 * len(qualities))
    counts = Counter(qualities)
    # interior integers each get 1/65 of the mass, the two ends half of that
    assert_prob(counts[62], len(qualities), 1 / 65, f"{which} quality 62")
    assert_prob(counts[30] + counts[95], len(qualities), 1 / 65, f"{which} quality ends")


def test_final_sinc(resr):
    finals = [p["sinc"] for p in resr]
    sincs = [k for k in finals if k["family"] == "sinc"]
    assert all(k["family"] in ("sinc", "pulse") for k in finals)
    assert_prob(len(sincs), len(finals), 0.8, "final sinc")
    assert_uniform_counts(Counter(k["size"] for k in sincs), ODD, len(sincs), "final sinc size")
    assert_uniform([k["cutoff"] for k in sincs], PI / 3, PI, "final sinc cutoff")


def test_final_order(resr):
    for p in resr:
        assert p["info"]["final_order"] == p["order"]
    a = sum(p["order"] == "resize-sinc-jpeg" for p in resr)
    assert_prob(a, len(resr), 0.5, "final order A")


def test_usm_defaults_and_disable(resr):
    for p in resr[:50]:
        assert p["usm"] == {"kernel_size": 51, "sigma": 8.0, "weight": 0.5, "threshold": 10.0}
    for plan in plans("realesrgan", 200, **{"sharpen.enabled": False}):
        assert all(o["op"] != "usm_sharpen" for o in plan.ops)
        assert plan.info["sharpen_gt"] is False
        assert "usm" not in split_realesrgan(plan.ops)


def test_blind_prompt(resr):
    assert all(p["prompt"] == BLIND_PROMPT for p in resr)


def test_draws_depend_on_seed():
    a, b = plans("realesrgan", 1, start=11)[0], plans("realesrgan", 1, start=12)[0]
    assert a.ops != b.ops
    assert plans("realesrgan", 1, start=11)[0].ops == a.ops


def test_overridden_probabilities_are_used():
    found = plans("realesrgan", 400, **{"second.blur_prob": 0.0, "final_sinc_prob": 1.0})
    for plan in found:
        parts = split_realesrgan(plan.ops)
        assert parts["kernel2"] is None
        assert parts["sinc"]["family"] == "sinc"


# ---------------------------------------------------------------- executed output sizes
@pytest.mark.parametrize("scale", [1, 2, 4])
def test_scale_gives_lr_size(scale):
    rng = np.random.default_rng(scale)
    image = (rng.random((64, 48, 3)) * 255).astype(np.uint8)
    for seed in range(6):
        lq, record = degradations.synthesize(image, "realesrgan", seed, scale=scale)
        assert lq.shape == (64 // scale, 48 // scale, 3)
        assert lq.dtype == np.uint8
        assert record["lq_size"] == [64 // scale, 48 // scale]
        hr, _ = degradations.synthesize(image, "realesrgan", seed, scale=scale, lq_size="hr")
        assert hr.shape == image.shape


def test_x2_config_resizes_second_stage_relative_to_half():
    for plan in plans("realesrgan", 100, scale=2):
        parts = split_realesrgan(plan.ops)
        assert parts["resize3"]["params"]["size"] == [SHAPE[0] // 2, SHAPE[1] // 2]


def test_lq_size_hr_resizes_back():
    for plan in plans("realesrgan", 100, lq_size="hr"):
        tail = split_realesrgan(plan.ops)["tail"]
        assert [o["op"] for o in tail] == ["quantize", "resize"]
        assert tail[1]["params"]["size"] == list(SHAPE)


# ------------------------------------------------------------------------------------ TIP
@pytest.fixture(scope="module")
def tip():
    return plans("tip", N_PLANS, shape=(400, 300))


@pytest.fixture(scope="module")
def tip_param():
    """Only the parameterised branch, for the conditional statistics."""
    return plans("tip", 12000, shape=(400, 300), start=10**6, realesrgan_prob=0.0)


def test_tip_branch_and_caption_drop(tip):
    branches = Counter(p.info["branch"] for p in tip)
    assert set(branches) == {"realesrgan", "parameterised"}
    assert_prob(branches["realesrgan"], len(tip), 0.5, "tip realesrgan branch")
    assert all(isinstance(p.info["drop_caption"], bool) for p in tip)
    assert_prob(sum(p.info["drop_caption"] for p in tip), len(tip), 0.1, "drop caption")


def test_tip_realesrgan_branch(tip):
    blind = [p for p in tip if p.info["branch"] == "realesrgan"]
    for plan in blind:
        assert plan.prompt == BLIND_PROMPT
        parts = split_realesrgan(plan.ops)
        assert "usm" in parts and parts["kernel1"] is not None
        assert parts["kernel2"] is not None  # all stages always on
        assert [o["op"] for o in parts["tail"]] == ["quantize", "resize"]
        assert parts["tail"][1]["params"]["size"] == [400, 300]
    for plan in tip:
        if plan.info["branch"] == "parameterised":
            assert plan.prompt != BLIND_PROMPT
            assert all(o["op"] not in ("usm_sharpen", "filter") for o in plan.ops)


def _applied(plan: Any) -> list[str]:
    return [o["op"] for o in plan.ops if o["op"] in TIP_ORDER]


def test_tip_conditional_type_probability(tip_param):
    n = len(tip_param)
    applied = [_applied(p) for p in tip_param]
    assert all(len(a) >= 1 for a in applied)
    for name in TIP_ORDER:
        count = sum(name in a for a in applied)
        assert_prob(count, n, 8 / 15, f"P({name} applied | at least one)")
    sizes = Counter(len(a) for a in applied)
    for k, ways in {1: 4, 2: 6, 3: 4, 4: 1}.items():
        assert_prob(sizes[k], n, ways / 15, f"{k} types applied")
    for plan, names in zip(tip_param, applied, strict=True):
        assert plan.labels == names


def test_tip_ops_in_canonical_order(tip_param, tip):
    for plan in [*tip_param, *(p for p in tip if p.info["branch"] == "parameterised")]:
        names = _applied(plan)
        assert names == sorted(names, key=TIP_ORDER.index)
        ops = [o["op"] for o in plan.ops]
        assert ops == [*names, "quantize", "resize"]
        assert plan.ops[-1]["params"]["size"] == [400, 300]


def test_tip_param_vs_type_only_clause(tip_param):
    total = param = 0
    for plan in tip_param:
        prompt = degradations.parse_prompt(plan.prompt)
        assert not prompt.blind
        assert list(prompt.types) == _applied(plan)
        total += len(prompt.clauses)
        param += sum(c.params is not None for c in prompt.clauses)
    assert_prob(param, total, 0.5, "parameter clause")


@pytest.mark.parametrize("name", TIP_ORDER)
def test_tip_values_in_range_and_printed_precision(name, tip_param):
    key, low, high, decimals = TIP_RANGES[name]
    values = [o["params"][key] for p in tip_param for o in p.ops if o["op"] == name]
    assert len(values) > 3000
    for v in values:
        assert low <= v <= high, v
        if decimals == 0:
            assert type(v) is int
        else:
            assert isinstance(v, float) and float(f"{v:.{decimals}f}") == v, v
    # the rounded grid is covered end to end
    assert min(values) == low and max(values) == high
    # uniform before rounding: interior grid points equally likely
    step = 10.0**-decimals
    interior = Counter(v for v in values if low + step / 2 < v < high - step / 2)
    n_points = round((high - low) / step) - 1
    assert len(interior) == n_points
    p = stats.chisquare(list(interior.values())).pvalue
    assert p > 1e-4, f"{name} {key} not uniform over the grid (p={p:.2g})"


def test_tip_applied_value_is_printed_value(tip_param, tip):
    checked = 0
    for plan in [*tip_param, *(p for p in tip if p.info["branch"] == "parameterised")]:
        ops = {o["op"]: o["params"] for o in plan.ops}
        for clause in degradations.parse_prompt(plan.prompt).clauses:
            if clause.params is None:
                continue
            for key, value in clause.params.items():
                assert ops[clause.type][key] == value, (plan.prompt, ops[clause.type])
                assert type(ops[clause.type][key]) is type(value)
                checked += 1
    assert checked > 5000


def test_tip_prompt_text_format(tip_param):
    for plan in tip_param[:500]:
        assert plan.prompt.endswith(";")
        for piece in plan.prompt.split(";")[:-1]:
            assert piece.strip() == piece.strip(" ")
        ops = {o["op"]: o["params"] for o in plan.ops}
        if "blurry" in ops and "Deblur with" in plan.prompt:
            assert f"Deblur with sigma {ops['blurry']['sigma']:.1f};" in plan.prompt
        if "low-resolution" in ops and "Upsample to" in plan.prompt:
            assert f"Upsample to {ops['low-resolution']['factor']:.1f}x;" in plan.prompt
        if "noisy" in ops and "Denoise with" in plan.prompt:
            assert f"Denoise with sigma {ops['noisy']['sigma']:.2f};" in plan.prompt
        if "jpeg-compressed" in ops and "Dejpeg with" in plan.prompt:
            assert f"Dejpeg with quality {ops['jpeg-compressed']['quality']};" in plan.prompt
