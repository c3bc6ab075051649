"""Physically modelled types: motion blur, haze, low light and inpainting holes.

Each type must replay bit-exactly from its record, get stronger with its prompt number,
round-trip through the prompt grammar and reject out-of-range prompts.
"""

from __future__ import annotations

import itertools
import json
import math

import cv2
import numpy as np
import pytest

import degradations.types.haze
import degradations.types.inpaint
import degradations.types.lowlight
import degradations.types.motion  # noqa: F401  (the package __init__ does not import these yet)
from degradations import PromptError, parse_prompt, render_prompt, replay_sample, synthesize_sample
from degradations.primitives import to_float
from degradations.registry import get_degradation, get_op
from degradations.seeding import generator
from degradations.types.haze import depth_prior
from degradations.types.inpaint import AREA_TOLERANCE
from degradations.types.motion import motion_kernel
from uir.demo import demo_images
from uir.imageio import load_rgb, read_depth, sidecar

VERBS = {
    "motion-blurry": "Remove motion blur",
    "hazy": "Dehaze",
    "low-light": "Brighten",
    "uncompleted": "Inpaint",
}
EXAMPLES = {
    "motion-blurry": "Remove motion blur of length 17 at angle 135;",
    "hazy": "Dehaze with density 0.75;",
    "low-light": "Brighten with gamma 2.5;",
    "uncompleted": "Inpaint 20% area;",
}
HIDDEN = {  # fixed hidden parameters for the strength ladders
    "motion-blurry": {"angle": 30, "bend": 0.0},
    "hazy": {"airlight": [0.9, 0.92, 0.95], "depth_source": "auto", "depth_mix": 0.6},
    "low-light": {"alpha": 0.95, "beta": 0.8, "photons": 300.0, "read_noise": 0.005, "seed": 7},
}


def _demo(stem: str) -> tuple[np.ndarray, np.ndarray | None]:
    path = next(p for p in demo_images() if p.stem == stem)
    depth = sidecar(path, ".depth.png")
    return load_rgb(path), (read_depth(depth) if depth else None)


MOTO, MOTO_DEPTH = _demo("motorcycle")
PHOTO = cv2.resize(MOTO, (96, 64), interpolation=cv2.INTER_AREA)
PHOTO_F = to_float(PHOTO)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * math.log10(1 / float(np.mean((a.astype(np.float64) - b) ** 2)))


# ----------------------------------------------------------------------------- replay
@pytest.mark.parametrize("name", list(VERBS))
def test_type_only_clause_replays_bit_exactly(name):
    visible, recorded = set(), set()
    for seed in range(50):
        sample = synthesize_sample(PHOTO, "prompt", seed, prompt=VERBS[name])
        record = json.loads(json.dumps(sample.record))
        again = replay_sample(PHOTO, record)
        np.testing.assert_array_equal(again.lq, sample.lq)
        assert again.extras.keys() == sample.extras.keys()
        for key, array in sample.extras.items():
            np.testing.assert_array_equal(again.extras[key], array)
        assert not np.array_equal(sample.lq, PHOTO)
        values = record["info"]["applied"][name]
        get_degradation(name).check(values)
        visible.add(json.dumps(values))
        recorded.add(json.dumps(record["ops"][0]["params"], sort_keys=True))
    assert len(visible) >= 8, "type-only clauses should draw varied values"
    assert len(recorded) == 50, "every seed should give its own hidden parameters"


def test_hazy_with_depth_replays_and_needs_the_depth():
    for seed in range(50):
        sample = synthesize_sample(PHOTO, "prompt", seed, inputs={"depth": MOTO_DEPTH},
                                   prompt="Dehaze")
        assert sample.record["inputs"] == ["depth"]
        record = json.loads(json.dumps(sample.record))
        replayed = replay_sample(PHOTO, record, inputs={"depth": MOTO_DEPTH})
        np.testing.assert_array_equal(replayed.lq, sample.lq)
    with pytest.raises(ValueError, match="depth"):
        replay_sample(PHOTO, record)


def test_hidden_parameters_come_from_the_seed():
    for name in ("motion-blurry", "hazy", "low-light", "uncompleted"):
        kind = get_degradation(name)
        assert kind.hidden is not None
        first = kind.hidden(generator(3), (64, 96))
        assert first == kind.hidden(generator(3), (64, 96))
        assert first != kind.hidden(generator(4), (64, 96)), name
        assert json.loads(json.dumps(first)) == first, "records hold plain parameters"


# ----------------------------------------------------------------------------- strength
def _ladder(name: str, param: str, values: list[float], **changes: float) -> list[np.ndarray]:
    fn = get_op(name).fn
    fixed = {**HIDDEN[name], **changes}
    return [fn(PHOTO_F, **{param: v}, **fixed) for v in values]


@pytest.mark.parametrize("bend", [0.0, 0.3])
def test_motion_blur_gets_stronger_with_length(bend):
    outs = _ladder("motion-blurry", "length", [3, 7, 13, 21, 31], bend=bend)
    scores = [psnr(out, PHOTO_F) for out in outs]
    assert all(a > b for a, b in itertools.pairwise(scores)), scores


def test_haze_gets_stronger_with_density():
    outs = _ladder("hazy", "density", [0.25, 0.5, 1.0, 2.0, 4.0])
    scores = [psnr(out, PHOTO_F) for out in outs]
    assert all(a > b for a, b in itertools.pairwise(scores)), scores


def test_low_light_gets_darker_with_gamma():
    outs = _ladder("low-light", "gamma", [1.0, 1.5, 2.5, 4.0, 6.0])
    means = [float(out.mean()) for out in outs]
    assert all(a > b for a, b in itertools.pairwise(means)), means
    assert means[0] < float(PHOTO_F.mean())


def test_hole_area_follows_the_prompt():
    fn = get_op("uncompleted").fn
    areas = []
    for target in (2, 10, 25, 50, 85):
        _, extras = fn(PHOTO_F, area=target, seed=11)
        measured = 100 * float(extras["mask"].mean())
        assert target <= measured <= target + AREA_TOLERANCE, (target, measured)
        areas.append(measured)
    assert all(a < b for a, b in itertools.pairwise(areas)), areas


@pytest.mark.parametrize("shape", [(32, 32), (64, 96), (300, 200)])
def test_hole_area_is_within_tolerance_for_many_seeds(shape):
    fn = get_op("uncompleted").fn
    image = np.zeros((*shape, 3), np.float32)
    for seed in range(20):
        area = 1 + seed * 89 // 19
        _, extras = fn(image, area=area, seed=seed)
        measured = 100 * float(extras["mask"].mean())
        assert area <= measured <= area + AREA_TOLERANCE, (shape, seed, area, measured)


def test_unreachable_hole_area_is_a_clear_error():
    with pytest.raises(ValueError, match="no pixel count"):
        get_op("uncompleted").fn(np.zeros((4, 4, 3), np.float32), area=1, seed=0)


# ----------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("name", list(VERBS))
def test_shape_dtype_and_range(name):
    kind = get_degradation(name)
    values = kind.sample(generator(5))
    hidden = kind.hidden(generator(6), PHOTO.shape[:2])
    out = kind.op.fn(PHOTO_F.copy(), **values, **hidden)
    if kind.op.outputs:
        out, extras = out
        assert set(extras) == set(kind.op.outputs)
    assert out.dtype == np.float32 and out.shape == PHOTO_F.shape
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6
    lq = synthesize_sample(PHOTO, "prompt", 0, prompt=EXAMPLES[name]).lq
    assert lq.dtype == np.uint8 and lq.shape == PHOTO.shape


# ----------------------------------------------------------------------------- prompts
@pytest.mark.parametrize("name", list(VERBS))
def test_prompt_round_trip(name):
    kind = get_degradation(name)
    rng = generator(9)
    for _ in range(50):
        text = render_prompt(parse_prompt(kind.render(kind.sample(rng)) + ";"))
        assert render_prompt(parse_prompt(text)) == text
        assert parse_prompt(text).clauses[0].type == name
    typed = parse_prompt(EXAMPLES[name].upper().replace(" ", "  ").rstrip(";"))
    assert render_prompt(typed) == EXAMPLES[name]
    assert parse_prompt(VERBS[name].lower()).clauses[0].params is None


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("Dehaze with density -1", "density"),
        ("Inpaint 95% area", "area"),
        ("Inpaint 12.5% area", "area must be an integer"),
        ("Brighten with gamma 0.5", "gamma"),
        ("Remove motion blur of length 0 at angle 10", "length"),
        ("Remove motion blur of length 9 at angle 400", "angle"),
        ("Remove motion blur of length 9", "cannot parse"),
    ],
)
def test_bad_values_are_prompt_errors(prompt, message):
    with pytest.raises(PromptError, match=message):
        parse_prompt(prompt)


# ----------------------------------------------------------------------------- haze
def test_haze_uses_the_depth_input():
    fn = get_op("hazy").fn
    hidden = HIDDEN["hazy"]
    prior = fn(PHOTO_F, density=1.5, **hidden)
    with_depth = fn(PHOTO_F, density=1.5, **hidden, depth=MOTO_DEPTH)  # 741x500, resized
    assert np.abs(prior - with_depth).mean() > 0.01
    resized = cv2.resize(MOTO_DEPTH, (96, 64), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(with_depth, fn(PHOTO_F, density=1.5, **hidden, depth=resized))
    prior_sample = synthesize_sample(PHOTO, "prompt", 1, prompt="Dehaze with density 1.5")
    depth_sample = synthesize_sample(PHOTO, "prompt", 1, inputs={"depth": MOTO_DEPTH},
                                     prompt="Dehaze with density 1.5")
    assert prior_sample.record["inputs"] == [] and depth_sample.record["inputs"] == ["depth"]
    assert prior_sample.record["ops"] == depth_sample.record["ops"]
    assert not np.array_equal(prior_sample.lq, depth_sample.lq)
    assert prior_sample.extras == {} and depth_sample.extras == {}


def test_farther_is_hazier():
    grey = np.full((40, 60, 3), 0.2, np.float32)
    ramp = np.tile(np.linspace(0, 1, 60, dtype=np.float32), (40, 1))
    out = get_op("hazy").fn(grey, density=1.0, **HIDDEN["hazy"], depth=ramp)
    assert np.all(np.diff(out[..., 0], axis=1) > 0), "hazier towards depth 1"
    np.testing.assert_allclose(out[:, 0], grey[:, 0], atol=1e-6)  # depth 0: no haze
    prior = depth_prior(grey, mix=0.6)
    assert np.all(np.diff(prior[:, 0]) < 0), "the prior puts the top farthest"
    with pytest.raises(ValueError, match="depth"):
        get_op("hazy").fn(grey, density=1.0, **HIDDEN["hazy"], depth=np.zeros(5))


# ----------------------------------------------------------------------------- low light
def test_low_light_noise_is_signal_dependent_and_seeded():
    fn = get_op("low-light").fn
    params = {**HIDDEN["low-light"], "gamma": 1.0, "alpha": 1.0, "beta": 1.0, "photons": 100.0}
    residual_std = []
    for level in (0.1, 0.6):
        flat = np.full((64, 64, 3), level, np.float32)
        residual_std.append(float((fn(flat, **params) - level).std()))
    assert residual_std[1] > 1.5 * residual_std[0], residual_std  # shot noise grows with signal
    a = fn(PHOTO_F, **{**params, "seed": 1})
    assert not np.array_equal(a, fn(PHOTO_F, **{**params, "seed": 2}))
    np.testing.assert_array_equal(a, fn(PHOTO_F, **{**params, "seed": 1}))


# ----------------------------------------------------------------------------- inpainting
@pytest.mark.parametrize(("fill", "level"), [(None, 255), (0.0, 0)])
def test_mask_marks_exactly_the_filled_pixels(fill, level):
    overrides = {} if fill is None else {"extra_params": {"uncompleted": {"fill": fill}}}
    for seed in range(10):
        sample = synthesize_sample(PHOTO, "prompt", seed, prompt="Inpaint 20% area",
                                   **overrides)
        mask = sample.extras["mask"]
        assert mask.dtype == np.uint8 and mask.shape == PHOTO.shape[:2]
        assert set(np.unique(mask)) == {0, 1}
        assert np.all(sample.lq[mask == 1] == level)
        np.testing.assert_array_equal(sample.lq[mask == 0], PHOTO[mask == 0])
        replayed = replay_sample(PHOTO, json.loads(json.dumps(sample.record)))
        np.testing.assert_array_equal(replayed.extras["mask"], mask)


def test_masks_are_irregular_strokes():
    _, extras = get_op("uncompleted").fn(np.zeros((128, 128, 3), np.float32), area=20, seed=3,
                                         box_prob=0.0)
    mask = extras["mask"]
    count, _ = cv2.connectedComponents(mask)
    _, _, w, h = cv2.boundingRect(mask)
    assert mask.sum() < 0.6 * w * h, "strokes, not a filled rectangle"
    assert count >= 2


# ----------------------------------------------------------------------------- motion kernel
def _moments(kernel: np.ndarray, angle: float) -> tuple[float, float, float, float]:
    """Centroid offsets and variances along and across the direction ``angle``."""
    radius = kernel.shape[0] // 2
    ys, xs = np.mgrid[-radius:radius + 1, -radius:radius + 1].astype(np.float64)
    theta = math.radians(angle)
    along = xs * math.cos(theta) - ys * math.sin(theta)
    across = xs * math.sin(theta) + ys * math.cos(theta)
    w = kernel.astype(np.float64)
    mean_a, mean_c = float((w * along).sum()), float((w * across).sum())
    var_a = float((w * (along - mean_a) ** 2).sum())
    var_c = float((w * (across - mean_c) ** 2).sum())
    return mean_a, mean_c, var_a, var_c


@pytest.mark.parametrize("angle", [0, 30, 90, 135, -60])
def test_motion_kernel_is_a_line_along_its_angle(angle):
    kernel = motion_kernel(21.0, float(angle), 0.0)
    assert kernel.min() >= 0 and abs(float(kernel.sum()) - 1) < 1e-5
    mean_a, mean_c, var_a, var_c = _moments(kernel, angle)
    assert abs(mean_a) < 1e-4 and abs(mean_c) < 1e-4, "centred: no image shift"
    assert var_a > 20 * var_c, (var_a, var_c)
    assert abs(var_a - 21**2 / 12) < 2.0, "a uniform streak of the chord's length"


def test_curved_kernels_differ_from_linear():
    straight = motion_kernel(21.0, 30.0, 0.0)
    for bend in (0.3, -0.3):
        curved = motion_kernel(21.0, 30.0, bend)
        mean_a, mean_c, _, var_c = _moments(curved, 30)
        assert var_c > 4 * _moments(straight, 30)[3], "bent across the chord"
        assert abs(mean_a) < 1e-4 and abs(mean_c) < 1e-4, "centred on the path's centroid"
        out = get_op("motion-blurry").fn(PHOTO_F, length=21, angle=30, bend=bend)
        linear = get_op("motion-blurry").fn(PHOTO_F, length=21, angle=30, bend=0.0)
        assert np.abs(out - linear).mean() > 1e-3
    assert not np.allclose(motion_kernel(21.0, 30.0, 0.3), motion_kernel(21.0, 30.0, -0.3))
    bends = [get_degradation("motion-blurry").hidden(generator(s), (64, 64))["bend"]
             for s in range(400)]
    straight_share = sum(b == 0 for b in bends) / len(bends)
    assert 0.4 < straight_share < 0.6
    assert all(b == 0 or 0.1 <= abs(b) <= 0.5 for b in bends)
