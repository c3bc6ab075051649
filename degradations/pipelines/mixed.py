"""Several registered types on one image: DA-CLIP names single-type data as its limit.

Types are chosen without replacement, applied in their canonical order, labelled
multi-label, and every one gets a clause in the prompt.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from degradations.config import Probability
from degradations.names import DACLIP_TYPES
from degradations.pipelines.typed import TypedConfig, plan_types
from degradations.prompt import Clause, RestorationPrompt, render
from degradations.registry import Plan, get_degradation, register_pipeline


class MixedConfig(TypedConfig):
    types: tuple[str, ...] = tuple(str(t) for t in DACLIP_TYPES)
    count: tuple[int, int] = (2, 3)  # how many types per sample, inclusive
    weights: dict[str, float] = Field(default_factory=dict)  # relative; missing types weigh 1
    param_clause_prob: Probability = 1.0

    @model_validator(mode="after")
    def _check_types(self) -> MixedConfig:
        for name in (*self.types, *self.weights):
            get_degradation(name)
        low, high = self.count
        if not 1 <= low <= high <= len(self.types):
            raise ValueError(f"count {self.count} must lie within 1..{len(self.types)} types")
        if any(w < 0 for w in self.weights.values()) or not any(
            self.weights.get(t, 1.0) > 0 for t in self.types
        ):
            raise ValueError("weights must be >= 0 with at least one positive")
        return self


def plan_mixed(shape: tuple[int, int], rng: np.random.Generator, config: MixedConfig) -> Plan:
    """Registered types composed on one image (multi-label, one clause per type)."""
    weights = np.array([config.weights.get(t, 1.0) for t in config.types], dtype=np.float64)
    count = min(int(rng.integers(config.count[0], config.count[1] + 1)),
                int(np.count_nonzero(weights)))
    picked = rng.choice(len(config.types), size=count, replace=False, p=weights / weights.sum())
    names = sorted((config.types[i] for i in picked), key=lambda n: get_degradation(n).order)
    applied = [(n, get_degradation(n).sample(rng, config.ranges.get(n))) for n in names]
    clauses = tuple(
        Clause(name, values if rng.uniform() < config.param_clause_prob else None)
        for name, values in applied
    )
    return Plan(
        ops=plan_types(shape, rng, applied, config),
        prompt=render(RestorationPrompt(clauses)),
        labels=names,
    )


register_pipeline("mixed", version=1, config=MixedConfig)(plan_mixed)
