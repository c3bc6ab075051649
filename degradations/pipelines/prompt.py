"""Degrade from a restoration prompt a person typed: the prompt is the specification.

"Deblur with sigma 2.0; Dejpeg with quality 40" always gives the same degradation; a
type-only clause ("Denoise;") draws its value from the configured range with the seed.
"""

from __future__ import annotations

import numpy as np

from degradations.pipelines.typed import TypedConfig, plan_types, resolve
from degradations.prompt import parse, render
from degradations.registry import Plan, register_pipeline


class PromptConfig(TypedConfig):
    prompt: str = ""


def plan_prompt(shape: tuple[int, int], rng: np.random.Generator, config: PromptConfig) -> Plan:
    """Ops from a typed restoration prompt ("Deblur with sigma 2.0; Dejpeg with quality 40")."""
    prompt = parse(config.prompt)
    if prompt.blind or not prompt.clauses:
        raise ValueError(
            "the prompt pipeline needs at least one degradation clause, "
            f"got {config.prompt!r}; use --pipeline realesrgan for a blind degradation"
        )
    applied = resolve(rng, list(prompt.clauses), config)
    return Plan(
        ops=plan_types(shape, rng, applied, config),
        prompt=render(prompt),
        labels=[name for name, _ in applied],
        info={"applied": {name: values for name, values in applied}},
    )


register_pipeline("prompt", version=1, config=PromptConfig)(plan_prompt)
