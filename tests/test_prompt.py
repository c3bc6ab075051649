"""Restoration prompts: round trips, what users type, rejections, the prompt pipeline."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from degradations import (
    Clause,
    PromptError,
    RestorationPrompt,
    parse_prompt,
    render_prompt,
    synthesize,
)
from degradations.registry import get_degradation

TIP_TYPES = ["blurry", "low-resolution", "noisy", "jpeg-compressed"]
VERBS = {"blurry": "Deblur", "low-resolution": "Upsample", "noisy": "Denoise",
         "jpeg-compressed": "Dejpeg"}
RANGES = {  # tip.md: parameter, sampling range, printed decimals
    "blurry": ("sigma", 0.2, 3.0, 1),
    "low-resolution": ("factor", 1.0, 4.0, 1),
    "noisy": ("sigma", 0.01, 0.25, 2),
    "jpeg-compressed": ("quality", 30, 95, 0),
}
BLIND = "Remove all degradation"


def P(*clauses: Clause, blind: bool = False) -> RestorationPrompt:
    return RestorationPrompt(tuple(clauses), blind)


def random_value(rng: random.Random, name: str) -> float | int:
    _, low, high, decimals = RANGES[name]
    if decimals == 0:
        return rng.randint(int(low), int(high))
    return round(rng.uniform(low, high), decimals)


def random_prompt(rng: random.Random) -> RestorationPrompt:
    types = rng.sample(TIP_TYPES, rng.randint(1, 4))  # random subset in random order
    clauses = []
    for name in types:
        if rng.random() < 0.3:
            clauses.append(Clause(name))
        else:
            clauses.append(Clause(name, {RANGES[name][0]: random_value(rng, name)}))
    return P(*clauses)


# ---------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("chunk", range(4))
def test_random_prompts_round_trip(chunk):
    rng = random.Random(chunk)
    for _ in range(500):
        prompt = random_prompt(rng)
        text = render_prompt(prompt)
        parsed = parse_prompt(text)
        assert parsed == prompt, text
        assert render_prompt(parsed) == text
        for clause, back in zip(prompt.clauses, parsed.clauses, strict=True):
            if clause.params is not None:
                for key, value in clause.params.items():
                    assert type(back.params[key]) is type(value), text


def test_render_exact_text():
    prompt = P(Clause("blurry", {"sigma": 3.0}), Clause("low-resolution", {"factor": 2.5}),
               Clause("noisy", {"sigma": 0.06}), Clause("jpeg-compressed", {"quality": 40}))
    assert render_prompt(prompt) == (
        "Deblur with sigma 3.0; Upsample to 2.5x; Denoise with sigma 0.06; "
        "Dejpeg with quality 40;"
    )
    assert render_prompt(P(Clause("noisy"), Clause("blurry"))) == "Denoise; Deblur;"
    assert render_prompt(P(blind=True)) == BLIND
    assert render_prompt(P(Clause("noisy", {"sigma": 0.1}))) == "Denoise with sigma 0.10;"
    assert render_prompt(P(Clause("low-resolution", {"factor": 4}))) == "Upsample to 4.0x;"


def test_values_beyond_printed_precision_still_round_trip():
    prompt = P(Clause("blurry", {"sigma": 2.95}), Clause("noisy", {"sigma": 0.125}))
    assert parse_prompt(render_prompt(prompt)) == prompt


@pytest.mark.parametrize(
    "clause",
    [
        Clause("blurry", {"sigma": 0.1}),
        Clause("blurry", {"sigma": 50.0}),
        Clause("low-resolution", {"factor": 1.0}),
        Clause("low-resolution", {"factor": 32.0}),
        Clause("noisy", {"sigma": 0.0}),
        Clause("noisy", {"sigma": 1.0}),
        Clause("noisy", {"sigma": 0.0001}),
        Clause("noisy", {"sigma": 0.00005}),  # valid (minimum 0.0) but below 1e-4
        Clause("jpeg-compressed", {"quality": 1}),
        Clause("jpeg-compressed", {"quality": 100}),
    ],
    ids=lambda c: f"{c.type}={next(iter(c.params.values()))}",
)
def test_every_valid_value_round_trips(clause):
    """tip.md: parse(render(params)) == params for every valid prompt, not only sampled ones."""
    prompt = P(clause)
    assert parse_prompt(render_prompt(prompt)) == prompt


@pytest.mark.parametrize("chunk", range(2))
def test_tip_record_prompts_round_trip(chunk):
    image = np.zeros((24, 24, 3), np.uint8)
    found_param = found_blind = 0
    for seed in range(chunk * 150, (chunk + 1) * 150):
        _, record = synthesize(image, "tip", seed)
        parsed = parse_prompt(record["prompt"])
        assert render_prompt(parsed) == record["prompt"]
        if parsed.blind:
            found_blind += 1
            assert record["prompt"] == BLIND
            continue
        found_param += 1
        ops = {o["op"]: o["params"] for o in record["ops"]}
        assert list(parsed.types) == [o["op"] for o in record["ops"] if o["op"] in TIP_TYPES]
        for clause in parsed.clauses:
            if clause.params is not None:
                for key, value in clause.params.items():
                    assert ops[clause.type][key] == value
    assert found_param > 40 and found_blind > 40


def test_json_round_trip():
    rng = random.Random(9)
    prompts = [random_prompt(rng) for _ in range(200)] + [P(blind=True), P()]
    for prompt in prompts:
        assert RestorationPrompt.from_json(prompt.to_json()) == prompt
        assert RestorationPrompt.from_json(json.loads(json.dumps(prompt.to_json()))) == prompt


def test_from_json_validates():
    with pytest.raises(PromptError):
        RestorationPrompt.from_json({"clauses": [{"type": "blurry", "params": {"sigma": -1}}]})
    with pytest.raises(PromptError, match="sepia-toned"):
        RestorationPrompt.from_json({"clauses": [{"type": "sepia-toned"}]})
    with pytest.raises(PromptError):
        RestorationPrompt.from_json({"blind": True, "clauses": [{"type": "blurry"}]})
    with pytest.raises(PromptError):
        RestorationPrompt.from_json({"clauses": [], "extra": 1})


# -------------------------------------------------------------------------- what users type
CANON = P(Clause("blurry", {"sigma": 3.0}), Clause("low-resolution", {"factor": 2.0}))


@pytest.mark.parametrize(
    "text",
    [
        "Deblur with sigma 3.0; Upsample to 2.0x;",
        "deblur with sigma 3.0; upsample to 2.0x;",
        "DEBLUR WITH SIGMA 3.0; UPSAMPLE TO 2.0X;",
        "dEbLuR wItH sIgMa 3.0;uPsAmPlE tO 2.0x",
        "  Deblur   with  sigma   3.0 ;   Upsample  to  2.0x ;  ",
        "Deblur with sigma 3.0; Upsample to 2.0x",
        "Deblur with sigma 3; Upsample to 2x;",
        "Deblur with sigma 3.00; Upsample to 2.0x;",
        "Deblur with sigma 3.; Upsample to 2 x;",
        "Deblur with sigma 3.0;\tUpsample to 2.0 x",
        "Deblur with sigma 3.0;; Upsample to 2x;;",
    ],
)
def test_user_variants_parse_to_the_same_prompt(text):
    assert parse_prompt(text) == CANON


@pytest.mark.parametrize("text", ["Upsample to 2x; Deblur with sigma 3",
                                  "upsample to 2.0 X;deblur with sigma 3.0;"])
def test_clause_order_gives_the_same_degradation(text):
    parsed = parse_prompt(text)
    assert {c.type: c.params for c in parsed.clauses} == {c.type: c.params for c in CANON.clauses}
    assert parsed.types == ("low-resolution", "blurry")  # the text's order is kept


def test_quality_integer_forms():
    want = P(Clause("jpeg-compressed", {"quality": 40}))
    for text in ("Dejpeg with quality 40", "dejpeg with quality 40.0;", "Dejpeg with quality 40."):
        got = parse_prompt(text)
        assert got == want
        assert type(got.clauses[0].params["quality"]) is int


def test_type_only_clauses_any_case():
    want = P(Clause("blurry"), Clause("noisy"), Clause("jpeg-compressed"),
             Clause("low-resolution"))
    assert parse_prompt("Deblur; Denoise; Dejpeg; Upsample;") == want
    assert parse_prompt("deblur;DENOISE ;  dejpeg;upsample") == want


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Deblur with sigma 3.0;", P(Clause("blurry", {"sigma": 3.0}))),
        ("Upsample to 6.0x; Deblur with sigma 2.9;",
         P(Clause("low-resolution", {"factor": 6.0}), Clause("blurry", {"sigma": 2.9}))),
        ("Denoise with sigma 0.06", P(Clause("noisy", {"sigma": 0.06}))),
        ("Denoise with sigma 0.24;", P(Clause("noisy", {"sigma": 0.24}))),
    ],
)
def test_paper_examples(text, expected):
    assert parse_prompt(text) == expected


@pytest.mark.parametrize("text", [BLIND, "remove all degradation", " Remove  all degradation; ",
                                  "REMOVE ALL DEGRADATION;"])
def test_blind_prompt(text):
    parsed = parse_prompt(text)
    assert parsed.blind and parsed.clauses == ()
    assert render_prompt(parsed) == BLIND


# ------------------------------------------------------------------------------- rejections
@pytest.mark.parametrize(
    ("text", "offending"),
    [
        ("Desaturate with amount 0.5", "Desaturate with amount 0.5"),
        ("Deblur with sigma 2.0; Deblurr", "Deblurr"),
        ("hello world", "hello world"),
        ("Deblur with sigma two", "Deblur with sigma two"),
        ("Deblur with sigma 1e-1", "Deblur with sigma 1e-1"),
        ("Deblur with sigma 3.0 Upsample to 2x", "Deblur with sigma 3.0 Upsample to 2x"),
        ("Dejpeg with quality 40.5", "40.5"),
        ("Deblur with sigma -1.0", "-1.0"),
        ("Denoise with sigma -0.05", "-0.05"),
        ("Dejpeg with quality 0", "Dejpeg with quality 0"),
        ("Dejpeg with quality 101", "Dejpeg with quality 101"),
        ("Upsample to 0.5x", "Upsample to 0.5x"),
        ("Denoise with sigma 1.5", "Denoise with sigma 1.5"),
        ("Deblur with sigma 0", "Deblur with sigma 0"),
        ("Deblur; Deblur with sigma 2.0", "blurry"),
        ("Denoise with sigma 0.1; Denoise with sigma 0.2", "noisy"),
        ("Remove all degradation; Deblur", BLIND),
        ("Upsample to 2x; remove all degradation", BLIND),
    ],
)
def test_rejections_name_the_offending_text(text, offending):
    with pytest.raises(PromptError) as info:
        parse_prompt(text)
    assert offending in str(info.value), str(info.value)


def test_prompt_error_is_a_value_error():
    with pytest.raises(ValueError):
        parse_prompt("garbage!")


def test_render_validates():
    with pytest.raises(PromptError):
        render_prompt(P(Clause("jpeg-compressed", {"quality": 40.5})))
    with pytest.raises(PromptError):
        render_prompt(P(Clause("blurry"), blind=True))
    with pytest.raises(PromptError):
        render_prompt(P(Clause("blurry", {"radius": 2.0})))
    with pytest.raises(PromptError):
        render_prompt(P(Clause("noisy", {"sigma": True})))


# ------------------------------------------------------------------------- prompt pipeline
IMAGE = np.round(np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)


def test_prompt_pipeline_applies_typed_values_in_canonical_order():
    a = "Dejpeg with quality 40; Upsample to 2.0x; Deblur with sigma 1.5"
    b = "Deblur with sigma 1.5; Dejpeg with quality 40; Upsample to 2x;"
    lq_a, rec_a = synthesize(IMAGE, "prompt", 1, prompt=a)
    lq_b, rec_b = synthesize(IMAGE, "prompt", 2, prompt=b)
    np.testing.assert_array_equal(lq_a, lq_b)  # fully specified: the seed does not matter
    assert rec_a["ops"] == rec_b["ops"]
    ops = rec_a["ops"]
    assert [o["op"] for o in ops] == ["blurry", "low-resolution", "jpeg-compressed",
                                      "quantize", "resize"]
    assert ops[0]["params"] == {"sigma": 1.5}
    assert ops[1]["params"]["factor"] == 2.0
    assert ops[2]["params"] == {"quality": 40}
    assert ops[-1]["params"]["size"] == [40, 40]
    assert lq_a.shape == IMAGE.shape
    # the same degradation by hand
    manual = [{"op": "blurry", "params": {"sigma": 1.5}},
              {"op": "low-resolution", "params": {"factor": 2.0, "mode": "bicubic"}},
              {"op": "jpeg-compressed", "params": {"quality": 40}},
              {"op": "quantize", "params": {}},
              {"op": "resize", "params": {"size": [40, 40], "mode": "bicubic"}}]
    from degradations.engine import execute

    np.testing.assert_array_equal(execute(IMAGE, manual), lq_a)
    assert parse_prompt(rec_a["prompt"]) == parse_prompt(a)


def test_prompt_pipeline_values_matter():
    lq1, _ = synthesize(IMAGE, "prompt", 0, prompt="Deblur with sigma 1.0")
    lq2, _ = synthesize(IMAGE, "prompt", 0, prompt="Deblur with sigma 2.0")
    assert not np.array_equal(lq1, lq2)


@pytest.mark.parametrize("name", TIP_TYPES)
def test_type_only_clause_draws_value_in_range(name):
    key, low, high, decimals = RANGES[name]
    values = []
    for seed in range(60):
        _, record = synthesize(IMAGE, "prompt", seed, prompt=VERBS[name] + ";")
        applied = [o for o in record["ops"] if o["op"] == name]
        assert len(applied) == 1
        value = applied[0]["params"][key]
        assert low <= value <= high
        assert round(value, decimals) == value
        values.append(value)
        assert record["info"]["applied"][name][key] == value
    assert len(set(values)) > 10  # drawn with the seed, not fixed


def test_type_only_clause_respects_configured_range():
    for seed in range(30):
        _, record = synthesize(IMAGE, "prompt", seed, prompt="Denoise",
                               ranges={"noisy": {"sigma": (0.2, 0.25)}})
        assert 0.2 <= record["ops"][0]["params"]["sigma"] <= 0.25


def test_prompt_pipeline_rejects_blind_and_bad_prompts():
    with pytest.raises(ValueError, match="clause"):
        synthesize(IMAGE, "prompt", 0, prompt=BLIND)
    with pytest.raises(ValueError):
        synthesize(IMAGE, "prompt", 0, prompt="")
    with pytest.raises(PromptError, match="Desaturate"):
        synthesize(IMAGE, "prompt", 0, prompt="Desaturate")


def test_registry_templates_are_the_tip_grammar():
    for name, verb in VERBS.items():
        kind = get_degradation(name)
        assert kind.verb == verb
    assert get_degradation("blurry").template == "Deblur with sigma {sigma}"
    assert get_degradation("low-resolution").template == "Upsample to {factor}x"
    assert get_degradation("noisy").template == "Denoise with sigma {sigma}"
    assert get_degradation("jpeg-compressed").template == "Dejpeg with quality {quality}"
