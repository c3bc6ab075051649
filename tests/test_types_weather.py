"""Weather and shadow types: replayable, strength-aware and addressable by prompt.

A restoration pair is only useful for TIP-style training if the prompt's number really
controls how strong the degradation is, and only auditable if the record replays it exactly.
"""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

import degradations
import degradations.types.shadow  # registers until the package imports it
import degradations.types.weather
from degradations.names import Degradation
from degradations.primitives import to_float
from degradations.prompt import Clause, parse, render
from degradations.registry import get_degradation, get_op
from degradations.seeding import generator
from uir.demo import demo_images
from uir.imageio import load_rgb

RAIN = {"length", "width", "angle", "brightness", "seed"}
SNOW = {"size", "angle", "motion", "opacity", "veil", "seed"}
DROPS = {"radius", "defocus", "magnification", "seed"}
# name, type-only clause, visible parameter, canonical order, recorded hidden parameters
TYPES = [
    (Degradation.SHADOWED, "Deshadow", "strength", 1, {"softness", "tint", "seed"}),
    (Degradation.RAINY, "Derain", "density", 3, RAIN),
    (Degradation.SNOWY, "Desnow", "density", 4, SNOW),
    (Degradation.RAINDROP, "Remove raindrops", "density", 5, DROPS),
]
BY_TYPE = pytest.mark.parametrize(("name", "verb", "param", "order", "hidden"), TYPES)
LADDER = (0.2, 0.4, 0.6, 0.8, 1.0)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photograph: flat test patterns hide drops and shadows that show on texture."""
    path = next(p for p in demo_images() if p.stem == "chelsea")
    return cv2.resize(load_rgb(path), (96, 80), interpolation=cv2.INTER_AREA)


def psnr(reference: np.ndarray, image: np.ndarray) -> float:
    mse = float(np.mean((reference.astype(np.float64) - image) ** 2))
    return math.inf if mse == 0 else -10 * math.log10(mse)


@BY_TYPE
def test_registered_with_clause_order_and_hidden_params(name, verb, param, order, hidden):
    kind = get_degradation(name)
    assert (kind.verb, kind.order, [p.name for p in kind.params]) == (verb, order, [param])
    assert set(kind.hidden(generator(0), (80, 96))) == hidden


@BY_TYPE
def test_replay_is_bit_exact_and_seeds_differ(photo, name, verb, param, order, hidden):
    outputs = set()
    for seed in range(50):
        sample = degradations.synthesize_sample(photo, "prompt", seed, prompt=verb)
        (entry,) = [op for op in sample.record["ops"] if op["op"] == name]
        assert set(entry["params"]) == hidden | {param}
        record = json.loads(json.dumps(sample.record))  # what a manifest stores
        again = degradations.replay_sample(photo, record)
        assert np.array_equal(again.lq, sample.lq), f"seed {seed} does not replay"
        assert not np.array_equal(sample.lq, photo), f"seed {seed} left the image unchanged"
        outputs.add(sample.lq.tobytes())
    assert len(outputs) == 50, "different seeds gave identical images"


@BY_TYPE
def test_strength_grows_with_the_visible_parameter(photo, name, verb, param, order, hidden):
    fn = get_op(name).fn
    hq = to_float(photo)
    for hidden_seed in range(3):
        extra = get_degradation(name).hidden(generator(hidden_seed), hq.shape[:2])
        scores = [psnr(hq, fn(hq, **{param: value}, **extra)) for value in LADDER]
        assert all(np.diff(scores) < 0), f"{param} {LADDER} gave PSNR {scores}"
        untouched = fn(hq, **{param: 0.0}, **extra)
        np.testing.assert_allclose(untouched, hq, atol=1e-6)


@BY_TYPE
@pytest.mark.parametrize("shape", [(80, 96), (37, 53), (9, 7)])
def test_output_is_float_rgb_in_range(photo, name, verb, param, order, hidden, shape):
    fn = get_op(name).fn
    scene = to_float(cv2.resize(photo, shape[::-1], interpolation=cv2.INTER_AREA))
    white = np.ones((*shape, 3), np.float32)  # where brightening effects would pass 1
    for hq in (scene, white):
        for seed in range(5):
            extra = get_degradation(name).hidden(generator(seed), shape)
            for value in (0.05, 1.0):
                out = fn(hq, **{param: value}, **extra)
                assert out.dtype == np.float32 and out.shape == (*shape, 3)
                assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@BY_TYPE
def test_the_recorded_seed_drives_the_randomness(photo, name, verb, param, order, hidden):
    fn = get_op(name).fn
    hq = to_float(photo)
    extra = get_degradation(name).hidden(generator(0), hq.shape[:2])
    reseeded = {**extra, "seed": extra["seed"] + 1}
    first = fn(hq, **{param: 0.5}, **extra)
    assert np.array_equal(first, fn(hq, **{param: 0.5}, **extra))
    assert not np.array_equal(first, fn(hq, **{param: 0.5}, **reseeded))


@BY_TYPE
def test_prompt_round_trip(photo, name, verb, param, order, hidden):
    typed = f"  {verb.upper()}   with {param} .35 "
    prompt = parse(typed)
    assert prompt.clauses == (Clause(name, {param: 0.35}),)
    canonical = f"{verb} with {param} 0.35;"
    assert render(prompt) == canonical and parse(canonical) == prompt
    lq, record = degradations.synthesize(photo, "prompt", 3, prompt=typed)
    assert record["prompt"] == canonical and record["labels"] == [name]
    assert record["ops"][0]["params"][param] == 0.35
    assert np.array_equal(degradations.replay(photo, record), lq)


def test_clauses_apply_in_canonical_order(photo):
    prompt = "Remove raindrops; Desnow; Derain; Deshadow; Deblur"
    _, record = degradations.synthesize(photo, "prompt", 0, prompt=prompt)
    applied = [op["op"] for op in record["ops"] if op["op"] in degradations.DEGRADATIONS]
    assert applied == ["shadowed", "rainy", "snowy", "raindrop", "blurry"]


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("Derain with density -0.5", r"density -0\.5 is outside the valid range \[0\.0, 1\.0\]"),
        ("Remove raindrops with density 2", r"density 2\.0 is outside the valid range"),
        ("Desnow with density 1.01", r"density 1\.01 is outside the valid range"),
        ("Deshadow with strength 7", r"strength 7\.0 is outside the valid range \[0\.0, 1\.0\]"),
        ("Deshadow with strength -0.2", r"strength -0\.2 is outside the valid range"),
        ("Derain with strength 0.3", r"cannot parse 'Derain with strength 0\.3'"),
    ],
)
def test_bad_values_are_clear_prompt_errors(photo, prompt, message):
    with pytest.raises(degradations.PromptError, match=message):
        parse(prompt)
    with pytest.raises(degradations.PromptError, match=message):
        degradations.synthesize(photo, "prompt", 0, prompt=prompt)


TIP_ALWAYS = {"tip": {"realesrgan_prob": 0.0, "skip_prob": 0.0}}  # its typed branch, every type


@pytest.mark.parametrize("preset", ["daclip", "tip"])
def test_a_crop_gets_the_weather_of_its_photo_and_its_own_shadow(preset):
    """``scene_side``: rain, drops and snow in a 64 px crop of a 512 px photo are sized as in
    the photo (same draws as for a 512 px image), a shadow still for the crop."""
    rng = np.random.default_rng(5)
    crop = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    photo = rng.integers(0, 256, (512, 600, 3), dtype=np.uint8)
    for kind in (Degradation.RAINY, Degradation.RAINDROP, Degradation.SNOWY):
        types = {"types": [str(kind)], **TIP_ALWAYS.get(preset, {})}
        in_crop = degradations.synthesize_sample(crop, preset, 11, scene_side=512, **types)
        in_photo = degradations.synthesize_sample(photo, preset, 11, **types)
        shrunk = degradations.synthesize_sample(crop, preset, 11, **types)
        ops = [r.record["ops"][0] for r in (in_crop, in_photo, shrunk)]
        assert ops[0] == ops[1] and ops[0] != ops[2], kind
        assert in_crop.record["overrides"]["scene_side"] == 512
        replayed = degradations.replay_sample(crop, in_crop.record)
        np.testing.assert_array_equal(replayed.lq, in_crop.lq)
    shadow = {"types": [str(Degradation.SHADOWED)], **TIP_ALWAYS.get(preset, {})}
    assert (degradations.synthesize_sample(crop, preset, 11, scene_side=512, **shadow).record["ops"]
            == degradations.synthesize_sample(crop, preset, 11, **shadow).record["ops"])
    assert degradations.sizes_scene_geometry(preset)
    assert not degradations.sizes_scene_geometry("realesrgan")
