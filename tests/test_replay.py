"""Records replay bit-exactly; seeds depend only on (dataset seed, key); inputs are checked."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pydantic
import pytest

import degradations
from degradations import OPS, RECORD_FORMAT, derive_seed, engine, replay, synthesize
from degradations.config import merge

SEEDS_PER_PIPELINE = 300
CHUNKS = 3


def make_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A gradient with random texture: distinct levels for Poisson, edges for USM."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / max(width - 1, 1), y / max(height - 1, 1), (x + y) / (height + width)],
                    axis=-1)
    image = 0.7 * base + 0.3 * rng.random((height, width, 3))
    return np.round(image * 255).astype(np.uint8)


IMAGE = make_image(64, 64)
SMALL = make_image(48, 48, seed=1)
KERNELS = {
    "iso": {"family": "iso", "size": 7, "sigma": 1.3},
    "aniso": {"family": "aniso", "size": 9, "sigma_x": 2.0, "sigma_y": 0.5, "theta": 0.4},
    "generalized_iso": {"family": "generalized_iso", "size": 11, "sigma": 1.1, "beta": 0.7},
    "generalized_aniso": {"family": "generalized_aniso", "size": 13, "sigma_x": 1.0,
                          "sigma_y": 2.0, "theta": -1.0, "beta": 3.0},
    "plateau_iso": {"family": "plateau_iso", "size": 15, "sigma": 1.5, "beta": 1.0},
    "plateau_aniso": {"family": "plateau_aniso", "size": 17, "sigma_x": 0.8, "sigma_y": 2.5,
                      "theta": 2.0, "beta": 1.5},
    "sinc": {"family": "sinc", "size": 21, "cutoff": 1.2},
    "pulse": {"family": "pulse", "size": 21},
}
SINGLE_OPS: dict[str, dict[str, Any]] = {
    **{f"filter-{k}": {"op": "filter", "params": {"kernel": v}} for k, v in KERNELS.items()},
    "gaussian_blur": {"op": "gaussian_blur", "params": {"sigma": 1.7, "size": 11}},
    **{f"resize-{mode}-{tag}": {"op": "resize", "params": {"size": size, "mode": mode}}
       for mode in ("area", "bilinear", "bicubic", "nearest")
       for tag, size in (("down", [23, 37]), ("up", [80, 71]))},
    "resize-same": {"op": "resize", "params": {"size": [64, 64], "mode": "bicubic"}},
    **{f"gaussian_noise-gray={g}": {"op": "gaussian_noise",
                                    "params": {"sigma": 0.08, "gray": g, "seed": 12345}}
       for g in (False, True)},
    **{f"poisson_noise-gray={g}": {"op": "poisson_noise",
                                   "params": {"scale": 2.0, "gray": g, "seed": 2**62 + 7}}
       for g in (False, True)},
    "jpeg": {"op": "jpeg", "params": {"quality": 35}},
    "jpeg-444": {"op": "jpeg", "params": {"quality": 80, "subsampling": "444"}},
    "quantize": {"op": "quantize", "params": {}},
    "usm_sharpen": {"op": "usm_sharpen", "params": {"kernel_size": 51, "sigma": 8.0,
                                                    "weight": 0.5, "threshold": 10.0}},
    "blurry": {"op": "blurry", "params": {"sigma": 2.3}},
    "low-resolution": {"op": "low-resolution", "params": {"factor": 2.5, "mode": "bicubic"}},
    "noisy": {"op": "noisy", "params": {"sigma": 0.12, "seed": 99}},
    "jpeg-compressed": {"op": "jpeg-compressed", "params": {"quality": 40}},
}
IDENTITY_OPS = {"filter-pulse", "resize-same"}
# usm_sharpen and quantize move a uint8 image by less than half a level at most pixels


def record_for(image: np.ndarray, ops: list[dict[str, Any]]) -> dict[str, Any]:
    lq = engine.execute(image, ops)
    return {"format": RECORD_FORMAT, "hq_size": list(image.shape[:2]),
            "lq_size": list(lq.shape[:2]), "ops": ops}


def test_every_builtin_op_is_covered():
    builtin = {n for n, op in OPS.items()
               if op.fn.__module__ in ("degradations.primitives", "degradations.types.basic")}
    covered = {entry["op"] for entry in SINGLE_OPS.values()}
    assert builtin <= covered, f"ops without a replay test: {sorted(builtin - covered)}"


@pytest.mark.parametrize("name", list(SINGLE_OPS))
def test_single_op_replays_bit_exactly(name):
    ops = [SINGLE_OPS[name]]
    first = engine.execute(IMAGE, ops)
    # noise from another generator in between must not leak into the op
    np.random.default_rng().random(10)
    np.random.random(10)
    second = engine.execute(IMAGE, json.loads(json.dumps(ops)))
    assert first.dtype == np.uint8 and first.ndim == 3 and first.shape[2] == 3
    np.testing.assert_array_equal(first, second)
    if name in IDENTITY_OPS:
        np.testing.assert_array_equal(first, IMAGE)
    elif name not in ("quantize",):
        assert first.shape != IMAGE.shape or not np.array_equal(first, IMAGE), "op did nothing"
    record = record_for(IMAGE, ops)
    np.testing.assert_array_equal(replay(IMAGE, json.loads(json.dumps(record))), first)


@pytest.mark.parametrize("op", ["gaussian_noise", "poisson_noise", "noisy"])
def test_noise_field_comes_from_recorded_seed(op):
    params = {k: v for k, v in next(e for e in SINGLE_OPS.values() if e["op"] == op)["params"]
              .items()}
    a = engine.execute(IMAGE, [{"op": op, "params": {**params, "seed": 1}}])
    b = engine.execute(IMAGE, [{"op": op, "params": {**params, "seed": 2}}])
    assert not np.array_equal(a, b)


def test_gray_noise_is_the_same_on_every_channel():
    flat = np.full((32, 32, 3), 128, dtype=np.uint8)
    for op, extra in (("gaussian_noise", {"sigma": 0.1}), ("poisson_noise", {"scale": 2.0})):
        out = engine.execute(flat, [{"op": op, "params": {**extra, "gray": True, "seed": 5}}])
        assert np.array_equal(out[..., 0], out[..., 1])
        assert np.array_equal(out[..., 1], out[..., 2])
        color = engine.execute(flat, [{"op": op, "params": {**extra, "gray": False, "seed": 5}}])
        assert not np.array_equal(color[..., 0], color[..., 1])


def test_unknown_op_in_record_is_an_error():
    with pytest.raises(KeyError, match="no_such_op"):
        engine.execute(IMAGE, [{"op": "no_such_op", "params": {}}])
    with pytest.raises(ValueError, match="resize"):
        engine.execute(IMAGE, [{"op": "resize", "params": {"size": [4, 4], "mode": "lanczos"}}])


# ----------------------------------------------------------------------------- pipelines
def _check_pipeline_seeds(pipeline: str, seeds: range, image: np.ndarray,
                          **overrides: Any) -> None:
    for seed in seeds:
        lq, record = synthesize(image, pipeline, seed, **overrides)
        again, record_again = synthesize(image, pipeline, seed, **overrides)
        np.testing.assert_array_equal(lq, again, err_msg=f"{pipeline} seed {seed}")
        assert record == record_again
        text = json.dumps(record)
        restored = json.loads(text)
        np.testing.assert_array_equal(replay(image, restored), lq,
                                      err_msg=f"{pipeline} seed {seed}: replay differs")
        assert record["seed"] == seed and record["pipeline"] == pipeline
        assert list(lq.shape[:2]) == record["lq_size"]
        assert record["hq_size"] == list(image.shape[:2])


@pytest.mark.parametrize("chunk", range(CHUNKS))
@pytest.mark.parametrize("pipeline", ["realesrgan", "tip"])
def test_pipeline_replay_bit_exact(pipeline, chunk):
    per = SEEDS_PER_PIPELINE // CHUNKS
    _check_pipeline_seeds(pipeline, range(chunk * per, (chunk + 1) * per), SMALL)


@pytest.mark.parametrize(
    ("pipeline", "overrides"),
    [
        ("realesrgan", {"scale": 2}),
        ("realesrgan", {"lq_size": "hr"}),
        ("realesrgan", {"scale": 1, "sharpen": {"enabled": False}}),
        ("tip", {"lq_size": "lr"}),
        ("prompt", {"prompt": "Deblur; Upsample; Denoise; Dejpeg"}),
        ("prompt", {"prompt": "Denoise with sigma 0.2; Upsample to 1.5x"}),
    ],
)
def test_pipeline_replay_with_overrides(pipeline, overrides):
    _check_pipeline_seeds(pipeline, range(500, 520), make_image(40, 56, seed=3), **overrides)


def test_different_seeds_give_different_samples():
    outputs = {synthesize(SMALL, "realesrgan", s)[0].tobytes() for s in range(20)}
    assert len(outputs) == 20


def test_replay_needs_the_same_image():
    lq, record = synthesize(SMALL, "realesrgan", 3)
    other = make_image(48, 48, seed=99)
    assert not np.array_equal(replay(other, record), lq)


# --------------------------------------------------------------------------------- record
JSON_SCALARS = (str, int, float, bool, type(None))


def _json_native(value: Any, path: str = "record") -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str, f"{path}: key {key!r} is not a str"
            _json_native(item, f"{path}.{key}")
    elif type(value) is list:
        for i, item in enumerate(value):
            _json_native(item, f"{path}[{i}]")
    else:
        assert type(value) in JSON_SCALARS, f"{path}: {type(value).__name__} is not JSON-native"


@pytest.mark.parametrize(
    ("pipeline", "overrides"),
    [("realesrgan", {}), ("realesrgan", {"lq_size": "hr"}), ("tip", {}),
     ("prompt", {"prompt": "Deblur; Denoise with sigma 0.05"})],
)
def test_record_is_small_and_json_native(pipeline, overrides):
    for seed in range(40):
        _, record = synthesize(SMALL, pipeline, seed, **overrides)
        _json_native(record)
        assert type(record["seed"]) is int
        size = len(json.dumps(record))
        assert size < 4096, f"{pipeline} seed {seed}: record is {size} bytes"
        assert record["format"] == RECORD_FORMAT
        assert isinstance(record["pipeline_version"], int)
        assert isinstance(record["prompt"], str)


# ---------------------------------------------------------------------------------- seeds
KEYS = [f"shard-{i:03d}/img_{j:05d}.png" for i in range(5) for j in range(200)]


def test_derive_seed_independent_of_call_order():
    forward = {key: derive_seed(7, key) for key in KEYS}
    backward = {key: derive_seed(7, key) for key in reversed(KEYS)}
    shuffled_keys = list(KEYS)
    np.random.default_rng(0).shuffle(shuffled_keys)
    shuffled = {}
    for key in shuffled_keys:
        derive_seed(8, key)  # interleaved calls for another dataset seed
        shuffled[key] = derive_seed(7, key)
    assert forward == backward == shuffled


def test_derive_seed_distinct_and_in_range():
    seeds = [derive_seed(7, key) for key in KEYS]
    assert len(set(seeds)) == len(KEYS)
    assert all(type(s) is int and 0 <= s < 2**63 for s in seeds)
    other = [derive_seed(8, key) for key in KEYS]
    assert all(a != b for a, b in zip(seeds, other, strict=True))
    # keys that could collide under naive concatenation stay apart
    assert derive_seed(1, "23") != derive_seed(12, "3")
    assert derive_seed(0, "a") != derive_seed(0, "A")
    assert derive_seed(0, "") != derive_seed(0, " ")


def test_derive_seed_and_samples_are_stable_across_processes():
    """No dependence on Python's per-process hash randomisation or other global state."""
    code = (
        "import hashlib, numpy as np, degradations as d\n"
        "from tests.test_replay import SMALL\n"
        "print([d.derive_seed(3, k) for k in ('a', 'b/c.png', '')])\n"
        "print(hashlib.sha256(d.synthesize(SMALL, 'realesrgan', d.derive_seed(3, 'a'))[0]"
        ".tobytes()).hexdigest())\n"
        "print(hashlib.sha256(d.synthesize(SMALL, 'tip', 11)[0].tobytes()).hexdigest())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=root, check=True).stdout.splitlines()
    assert out[0] == str([derive_seed(3, k) for k in ("a", "b/c.png", "")])
    lq = synthesize(SMALL, "realesrgan", derive_seed(3, "a"))[0]
    assert out[1] == hashlib.sha256(lq.tobytes()).hexdigest()
    assert out[2] == hashlib.sha256(synthesize(SMALL, "tip", 11)[0].tobytes()).hexdigest()


# --------------------------------------------------------------------------------- errors
def test_replay_wrong_size_image():
    _, record = synthesize(SMALL, "realesrgan", 1)
    with pytest.raises(ValueError, match=r"48x48.*40x48"):
        replay(make_image(40, 48), record)
    with pytest.raises(ValueError, match="48x48"):
        replay(make_image(48, 47), record)


@pytest.mark.parametrize("fmt", ["uir-degradation-record/2", "", None, "other"])
def test_replay_rejects_other_formats(fmt):
    _, record = synthesize(SMALL, "tip", 1)
    record["format"] = fmt
    with pytest.raises(ValueError, match="format"):
        replay(SMALL, record)
    del record["format"]
    with pytest.raises(ValueError, match="format"):
        replay(SMALL, record)


def test_replay_rejects_a_tampered_lq_size():
    _, record = synthesize(SMALL, "realesrgan", 1)
    record["lq_size"] = [13, 12]
    with pytest.raises(ValueError, match="12"):
        replay(SMALL, record)


@pytest.mark.parametrize(
    ("image", "error", "match"),
    [
        (SMALL.astype(np.float32) / 255, ValueError, "uint8"),
        (SMALL.astype(np.uint16), ValueError, "uint16"),
        (SMALL[..., 0], ValueError, r"\(48, 48\)"),
        (np.zeros((48, 48, 4), np.uint8), ValueError, r"\(48, 48, 4\)"),
        (np.zeros((48, 48, 1), np.uint8), ValueError, "HxWx3"),
        (np.zeros((0, 48, 3), np.uint8), ValueError, "empty"),
        (SMALL.tolist(), TypeError, "numpy array"),
    ],
    ids=["float32", "uint16", "2d", "rgba", "1ch", "empty", "list"],
)
def test_bad_inputs_rejected(image, error, match):
    with pytest.raises(error, match=match):
        synthesize(image, "realesrgan", 0)
    _, record = synthesize(SMALL, "realesrgan", 0)
    with pytest.raises(error, match=match):
        replay(image, record)


def test_bad_seed_and_pipeline_rejected():
    with pytest.raises(ValueError, match="seed"):
        synthesize(SMALL, "realesrgan", -1)
    with pytest.raises(KeyError, match="no-such-pipeline"):
        synthesize(SMALL, "no-such-pipeline", 0)


# ------------------------------------------------------------------------------ overrides
def _second_blur(record: dict[str, Any]) -> bool:
    ops = [o["op"] for o in record["ops"]]
    jpeg1 = ops.index("jpeg")
    return ops[jpeg1 + 1] == "filter"


def test_dotted_override():
    for seed in range(30):
        _, record = synthesize(SMALL, "realesrgan", seed, **{"second.blur_prob": 1.0})
        assert _second_blur(record)
        assert merge({}, record["overrides"])["second"]["blur_prob"] == 1.0
    defaults = [_second_blur(synthesize(SMALL, "realesrgan", s)[1]) for s in range(30)]
    assert not all(defaults)


def test_nested_dict_override_keeps_other_defaults():
    for seed in range(30):
        _, record = synthesize(SMALL, "realesrgan", seed, second={"blur_prob": 0.0},
                               sharpen={"enabled": False})
        assert not _second_blur(record)
        assert record["ops"][0]["op"] == "filter"
        recorded = merge({}, record["overrides"])
        assert recorded["second"]["blur_prob"] == 0.0
        assert recorded["sharpen"]["enabled"] is False
    # deep merge: the second stage keeps its own sigma range (0.2, 1.5)
    sigmas = []
    for seed in range(200):
        _, record = synthesize(SMALL, "realesrgan", seed, second={"blur_prob": 1.0})
        ops = record["ops"]
        k = ops[[o["op"] for o in ops].index("jpeg") + 1]["params"]["kernel"]
        sigmas += [k[n] for n in ("sigma", "sigma_x", "sigma_y") if n in k]
    assert sigmas and max(sigmas) <= 1.5


def test_deeply_dotted_override():
    _, record = synthesize(SMALL, "realesrgan", 4, **{"first.kernel.sinc_prob": 1.0})
    assert record["ops"][1]["params"]["kernel"]["family"] == "sinc"


@pytest.mark.parametrize(
    "overrides",
    [
        {"second.blur_prb": 1.0},
        {"scal": 2},
        {"sharpen": {"enable": False}},
        {"first.kernel.sigmas": (0.1, 1.0)},
        {"final_sinc_prob": 1.5},
        {"scale": 3},
        {"second.kernel.sigma": (2.0, 1.0)},
    ],
)
def test_bad_overrides_raise_validation_error(overrides):
    with pytest.raises(pydantic.ValidationError):
        synthesize(SMALL, "realesrgan", 0, **overrides)


def test_tip_bad_override():
    with pytest.raises(pydantic.ValidationError):
        synthesize(SMALL, "tip", 0, skip_prb=0.2)
    with pytest.raises(pydantic.ValidationError):
        synthesize(SMALL, "tip", 0, **{"realesrgan.scal": 2})


def test_public_api_exports():
    for name in ("synthesize", "replay", "parse_prompt", "render_prompt", "RestorationPrompt",
                 "Clause", "PromptError", "derive_seed"):
        assert hasattr(degradations, name), name
