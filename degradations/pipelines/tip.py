"""TIP's training mix: half Real-ESRGAN ("Remove all degradation"), half parameterised.

The parameterised half applies blur, downsample, noise and JPEG in that order, each skipped
with probability 0.5, and describes each applied op with a type-only or a parameter clause.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from degradations.config import Probability
from degradations.names import Degradation
from degradations.pipelines.realesrgan import SECOND_STAGE, RealESRGANConfig, plan_realesrgan
from degradations.pipelines.typed import TypedConfig, plan_types
from degradations.prompt import Clause, RestorationPrompt, render
from degradations.registry import Plan, get_degradation, register_pipeline

TIP_TYPES = (
    Degradation.BLURRY,
    Degradation.LOW_RESOLUTION,
    Degradation.NOISY,
    Degradation.JPEG_COMPRESSED,
)


class TIPConfig(TypedConfig):
    scale_key: ClassVar[str] = "realesrgan.scale"

    realesrgan_prob: Probability = 0.5
    # "All stages always on" for TIP's Real-ESRGAN half: the second blur is not skipped.
    realesrgan: RealESRGANConfig = RealESRGANConfig(
        lq_size="hr", second=SECOND_STAGE.model_copy(update={"blur_prob": 1.0})
    )
    types: tuple[str, ...] = tuple(str(t) for t in TIP_TYPES)
    skip_prob: Probability = 0.5
    param_clause_prob: Probability = 0.5
    require_degradation: bool = True  # redraw the skips if all four were skipped
    caption_drop_prob: Probability = 0.1


def plan_tip(shape: tuple[int, int], rng: np.random.Generator, config: TIPConfig) -> Plan:
    """TIP: 50% Real-ESRGAN (blind prompt), 50% parameterised ops with numeric prompts."""
    if rng.uniform() < config.realesrgan_prob:
        plan = plan_realesrgan(shape, rng, config.realesrgan)
        plan.info["branch"] = "realesrgan"
    else:
        names: list[str] = []
        while not names:
            names = [t for t in config.types if rng.uniform() >= config.skip_prob]
            if not config.require_degradation:
                break
        applied = [(n, get_degradation(n).sample(rng, config.ranges.get(n))) for n in names]
        clauses = tuple(
            Clause(name, values if rng.uniform() < config.param_clause_prob else None)
            for name, values in applied
        )
        plan = Plan(
            ops=plan_types(shape, rng, applied, config),
            prompt=render(RestorationPrompt(clauses)),
            labels=names,
            info={"branch": "parameterised"},
        )
    plan.info["drop_caption"] = bool(rng.uniform() < config.caption_drop_prob)
    return plan


register_pipeline("tip", version=1, config=TIPConfig)(plan_tip)
