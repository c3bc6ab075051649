"""Typed configuration building blocks: strict, so a misspelt key is an error, not a default."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _ordered(value: tuple[float, float]) -> tuple[float, float]:
    if value[0] > value[1]:
        raise ValueError(f"range low {value[0]} is above high {value[1]}")
    return value


Range = Annotated[tuple[float, float], AfterValidator(_ordered)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


C = TypeVar("C", bound=Config)


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overrides`` into ``base``; dotted keys ("second.blur_prob") nest."""
    merged = dict(base)
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if rest:
            value = {rest: value}
        current = merged.get(head)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[head] = merge(current, value)
        else:
            merged[head] = value
    return merged


def build_config(config_type: type[C], overrides: Mapping[str, Any]) -> C:
    """Defaults of ``config_type`` with ``overrides`` applied, validated."""
    defaults = config_type().model_dump()
    return config_type.model_validate(merge(defaults, overrides))
