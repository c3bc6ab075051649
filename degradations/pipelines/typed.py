"""Planning for pipelines made of registered degradation types (TIP's branch, prompts).

Applied types become ops in the types' canonical order, so one prompt always maps to one
degradation, whatever order its clauses were typed in.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field, model_validator

from degradations.config import Config, Range
from degradations.pipelines.realesrgan import LQSize
from degradations.primitives import ResizeMode
from degradations.prompt import Clause
from degradations.registry import get_degradation, step


class TypedConfig(Config):
    ranges: dict[str, dict[str, Range]] = Field(default_factory=dict)
    extra_params: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"low-resolution": {"mode": "bicubic"}}
    )
    lq_size: LQSize = "hr"
    resize_back_mode: ResizeMode = ResizeMode.BICUBIC
    # short side of the photo the image was cut from, for types with scene geometry (rain,
    # drops, snow); None: the image is the whole scene
    scene_side: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check_ranges(self) -> TypedConfig:
        for type_name, ranges in self.ranges.items():
            kind = get_degradation(type_name)
            unknown = set(ranges) - set(kind.param_index)
            if unknown:
                raise ValueError(f"{type_name} has no parameters {sorted(unknown)}")
            for name, (low, high) in ranges.items():
                kind.param_index[name].check(low)
                kind.param_index[name].check(high)
        for type_name in self.extra_params:
            get_degradation(type_name)
        return self


def resolve(
    rng: np.random.Generator, clauses: list[Clause], config: TypedConfig
) -> list[tuple[str, dict[str, float | int]]]:
    """Concrete values for each clause; a type-only clause draws them from the config ranges."""
    return [
        (c.type, c.params or get_degradation(c.type).sample(rng, config.ranges.get(c.type)))
        for c in clauses
    ]


def plan_types(
    shape: tuple[int, int],
    rng: np.random.Generator,
    applied: list[tuple[str, dict[str, float | int]]],
    config: TypedConfig,
) -> list[dict[str, Any]]:
    """Ops for the applied types in canonical order, plus the resize back to HQ size."""
    scene = (config.scene_side, config.scene_side) if config.scene_side else shape
    ops = []
    for name, values in sorted(applied, key=lambda item: get_degradation(item[0]).order):
        kind = get_degradation(name)
        sized_for = scene if kind.scene_geometry else shape
        hidden = kind.hidden(rng, sized_for) if kind.hidden else {}
        ops.append(step(name, **{**values, **hidden, **config.extra_params.get(name, {})}))
    if config.lq_size == "hr" and ops:
        ops.append(step("quantize"))
        ops.append(step("resize", size=list(shape), mode=config.resize_back_mode))
    return ops
