"""The one registry of ops, degradation types and pipelines.

Records name ops by string, so replay needs a single lookup from a name to the code that
applies it. Degradation types are ops that also carry a parameter spec and a prompt clause,
which is what lets sampling, prompts, replay and listings work for any registered type.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ImageFn = Callable[..., np.ndarray]
HiddenSampler = Callable[[np.random.Generator, tuple[int, int]], dict[str, Any]]


@dataclass(frozen=True)
class Op:
    """A deterministic image operation: ``fn(image_f32, **params) -> image_f32``.

    ``inputs`` names side inputs the op receives as keyword arguments (None when absent),
    e.g. a depth map; ``outputs`` names side outputs: such an op returns
    ``(image, {name: array})``, e.g. an inpainting mask.
    """

    name: str
    fn: ImageFn
    doc: str = ""
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class NumericParam:
    """A prompt-visible parameter: sampled uniformly, rounded to what the prompt prints."""

    name: str
    low: float
    high: float
    decimals: int
    minimum: float = -math.inf
    maximum: float = math.inf
    doc: str = ""

    def round(self, value: float) -> float | int:
        if self.decimals == 0:
            return round(value)
        return round(float(value), self.decimals)

    def sample(self, rng: np.random.Generator, low: float, high: float) -> float | int:
        """A uniform draw at the printed precision; a pinned range (low == high) is exact."""
        if low == high:
            return int(low) if self.decimals == 0 else float(low)
        return self.round(rng.uniform(low, high))

    def format(self, value: float | int) -> str:
        """Print at the grammar's precision, or with more digits if the value has them."""
        if self.decimals == 0:
            return str(int(value))
        text = f"{value:.{self.decimals}f}"
        if float(text) == value:
            return text
        return np.format_float_positional(float(value), trim="-")  # never "5e-05"

    def check(self, value: float | int) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{self.name} must be a number, got {value!r}")
        if not math.isfinite(value) or not self.minimum <= value <= self.maximum:
            raise ValueError(
                f"{self.name} {value} is outside the valid range [{self.minimum}, {self.maximum}]"
            )
        if self.decimals == 0 and value != int(value):
            raise ValueError(f"{self.name} must be an integer, got {value}")


@dataclass(frozen=True)
class DegradationType:
    """A user-facing degradation: parameters, a prompt clause and the op that applies it.

    ``verb`` is the type-only clause ("Deblur"); ``template`` the parameter clause
    ("Deblur with sigma {sigma}"). ``hidden`` draws recorded parameters that the prompt
    does not show (noise seeds, resize modes). ``scene_geometry``: ``hidden`` sizes things for
    the whole photo an image was cut from (rain streaks, drops, flakes look the same in a crop
    as in the photo), not for the crop itself (a shadow must fall inside the crop).
    """

    name: str
    op: Op
    params: tuple[NumericParam, ...]
    verb: str
    template: str
    order: int
    hidden: HiddenSampler | None = None
    scene_geometry: bool = False
    doc: str = ""
    param_index: Mapping[str, NumericParam] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "param_index", {p.name: p for p in self.params})

    def default_ranges(self) -> dict[str, tuple[float, float]]:
        return {p.name: (p.low, p.high) for p in self.params}

    def sample(
        self,
        rng: np.random.Generator,
        ranges: Mapping[str, tuple[float, float]] | None = None,
    ) -> dict[str, float | int]:
        ranges = {**self.default_ranges(), **(ranges or {})}
        return {p.name: p.sample(rng, *ranges[p.name]) for p in self.params}

    def check(self, values: Mapping[str, Any]) -> None:
        missing = set(self.param_index) - set(values)
        unknown = set(values) - set(self.param_index)
        if missing or unknown:
            raise ValueError(
                f"{self.name}: expected parameters {sorted(self.param_index)}, "
                f"missing {sorted(missing)}, unknown {sorted(unknown)}"
            )
        for name, value in values.items():
            try:
                self.param_index[name].check(value)
            except ValueError as err:
                raise ValueError(f"{self.name}: {err}") from None

    def render(self, values: Mapping[str, float | int] | None) -> str:
        if values is None:
            return self.verb
        return self.template.format(
            **{name: self.param_index[name].format(v) for name, v in values.items()}
        )


OPS: dict[str, Op] = {}
DEGRADATIONS: dict[str, DegradationType] = {}


def register_op(
    name: str, *, inputs: tuple[str, ...] = (), outputs: tuple[str, ...] = ()
) -> Callable[[ImageFn], ImageFn]:
    name = str(name)

    def decorate(fn: ImageFn) -> ImageFn:
        if name in OPS:
            raise ValueError(f"op {name!r} is already registered")
        doc = (fn.__doc__ or "").strip().split("\n")[0]
        OPS[name] = Op(name=name, fn=fn, doc=doc, inputs=inputs, outputs=outputs)
        return fn

    return decorate


def register_degradation(
    name: str,
    *,
    params: tuple[NumericParam, ...],
    verb: str,
    template: str,
    order: int,
    hidden: HiddenSampler | None = None,
    scene_geometry: bool = False,
    inputs: tuple[str, ...] = (),
    outputs: tuple[str, ...] = (),
) -> Callable[[ImageFn], ImageFn]:
    """Register ``fn(image_f32, **params)`` as an op and as a prompt-addressable type."""
    name = str(name)

    def decorate(fn: ImageFn) -> ImageFn:
        register_op(name, inputs=inputs, outputs=outputs)(fn)
        phrases = {t.verb.lower() for t in DEGRADATIONS.values()}
        if verb.lower() in phrases:
            raise ValueError(f"{name}: the type-only clause {verb!r} is already taken")
        DEGRADATIONS[name] = DegradationType(
            name=name,
            op=OPS[name],
            params=params,
            verb=verb,
            template=template,
            order=order,
            hidden=hidden,
            scene_geometry=scene_geometry,
            doc=OPS[name].doc,
        )
        return fn

    return decorate


def get_op(name: str) -> Op:
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; registered: {', '.join(sorted(OPS))}") from None


def get_degradation(name: str) -> DegradationType:
    try:
        return DEGRADATIONS[name]
    except KeyError:
        known = ", ".join(sorted(DEGRADATIONS))
        raise KeyError(f"unknown degradation type {name!r}; registered: {known}") from None


@dataclass
class Plan:
    """What a pipeline decided for one sample: the ops to run and what they mean."""

    ops: list[dict[str, Any]]
    prompt: str
    labels: list[str]
    info: dict[str, Any] = field(default_factory=dict)


Planner = Callable[[tuple[int, int], np.random.Generator, Any], Plan]


@dataclass(frozen=True)
class Pipeline:
    """A planner plus its typed config; the version changes whenever sampling changes."""

    name: str
    version: int
    config_type: type
    planner: Planner
    doc: str = ""


PIPELINES: dict[str, Pipeline] = {}


def register_pipeline(name: str, *, version: int, config: type) -> Callable[[Planner], Planner]:
    def decorate(planner: Planner) -> Planner:
        if name in PIPELINES:
            raise ValueError(f"pipeline {name!r} is already registered")
        doc = (planner.__doc__ or "").strip().split("\n")[0]
        PIPELINES[name] = Pipeline(name, version, config, planner, doc)
        return planner

    return decorate


def get_pipeline(name: str) -> Pipeline:
    try:
        return PIPELINES[name]
    except KeyError:
        known = ", ".join(sorted(PIPELINES))
        raise KeyError(f"unknown pipeline {name!r}; registered: {known}") from None


def step(op: str, **params: Any) -> dict[str, Any]:
    """One record entry; ``get_op`` fails early on a misspelt op name."""
    get_op(op)
    return {"op": op, "params": params}
