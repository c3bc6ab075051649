"""synthesize and replay: the record is the program, so replaying it is running it again."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from degradations.config import build_config, merge
from degradations.presets import resolve_preset
from degradations.primitives import to_float, to_uint8
from degradations.registry import get_op, get_pipeline
from degradations.seeding import generator

RECORD_FORMAT = "uir-degradation-record/1"
Record = dict[str, Any]


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"expected a uint8 HxWx3 RGB array, got {image.dtype} with shape {image.shape}"
        )
    if min(image.shape[:2]) < 1:
        raise ValueError(f"empty image of shape {image.shape}")


@dataclass
class Sample:
    """An LQ image, its record, and side outputs such as an inpainting ``mask``."""

    lq: np.ndarray
    record: Record
    extras: dict[str, np.ndarray] = field(default_factory=dict)


def execute_all(
    image: np.ndarray,
    ops: list[dict[str, Any]],
    inputs: Mapping[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run recorded ops on a uint8 RGB image; return the uint8 LQ and side outputs.

    Side outputs are resized (nearest) to the LQ size, since later ops may resize the image.
    """
    inputs = inputs or {}
    current = to_float(image)
    extras: dict[str, np.ndarray] = {}
    for index, entry in enumerate(ops):
        op = get_op(entry["op"])
        side = {name: inputs.get(name) for name in op.inputs}
        try:
            current = op.fn(current, **entry.get("params", {}), **side)
        except Exception as err:
            raise ValueError(f"op {index} ({op.name}) failed: {err}") from err
        if op.outputs:
            current, produced = current
            extras.update(produced)
    lq = to_uint8(current)
    height, width = lq.shape[:2]
    for name, array in extras.items():
        if array.shape[:2] != (height, width):
            extras[name] = cv2.resize(array, (width, height), interpolation=cv2.INTER_NEAREST)
    return lq, extras


def execute(
    image: np.ndarray,
    ops: list[dict[str, Any]],
    inputs: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    return execute_all(image, ops, inputs)[0]


def sizes_scene_geometry(pipeline: str) -> bool:
    """Whether a preset's pipeline takes ``scene_side`` (the typed ones: TIP, DA-CLIP, mixed),
    so a builder that cuts crops can say how large the photo behind them is."""
    spec = get_pipeline(resolve_preset(pipeline).pipeline)
    return "scene_side" in spec.config_type.model_fields


def synthesize_sample(
    image: np.ndarray,
    pipeline: str,
    seed: int,
    inputs: Mapping[str, np.ndarray] | None = None,
    **overrides: Any,
) -> Sample:
    """Like ``synthesize``, also returning side outputs; ``inputs`` holds side inputs
    such as ``{"depth": depth_map}``.
    """
    _check_image(image)
    preset = resolve_preset(pipeline)
    spec = get_pipeline(preset.pipeline)
    settings = merge(preset.config, overrides)
    config = build_config(spec.config_type, settings)
    shape = (int(image.shape[0]), int(image.shape[1]))
    plan = spec.planner(shape, generator(seed), config)
    lq, extras = execute_all(image, plan.ops, inputs)
    record = {
        "format": RECORD_FORMAT,
        "preset": preset.name,
        "pipeline": spec.name,
        "pipeline_version": spec.version,
        "seed": int(seed),
        "overrides": settings,
        "hq_size": list(shape),
        "lq_size": [int(lq.shape[0]), int(lq.shape[1])],
        "prompt": plan.prompt,
        "labels": list(plan.labels),
        "info": plan.info,
        "inputs": sorted(inputs or {}),
        "ops": plan.ops,
    }
    return Sample(lq, json.loads(json.dumps(record)), extras)


def synthesize(
    image: np.ndarray, pipeline: str, seed: int, **overrides: Any
) -> tuple[np.ndarray, Record]:
    """Degrade ``image`` with a preset or pipeline; every random choice comes from ``seed``.

    ``pipeline`` is a preset (realesrgan, tip, daclip, mixed, or a YAML path) or a bare
    pipeline name; ``overrides`` change config fields, nested by dicts or dotted names
    (``scale=2``, ``**{"second.blur_prob": 1.0}``).
    """
    sample = synthesize_sample(image, pipeline, seed, **overrides)
    return sample.lq, sample.record


def replay_sample(
    image: np.ndarray,
    record: Mapping[str, Any],
    inputs: Mapping[str, np.ndarray] | None = None,
) -> Sample:
    _check_image(image)
    if record.get("format") != RECORD_FORMAT:
        raise ValueError(f"not a degradation record (format {record.get('format')!r})")
    expected = tuple(record["hq_size"])
    if image.shape[:2] != expected:
        raise ValueError(
            f"record was made for a {expected[0]}x{expected[1]} image, "
            f"got {image.shape[0]}x{image.shape[1]}"
        )
    missing = set(record.get("inputs", [])) - set(inputs or {})
    if missing:
        raise ValueError(f"record needs side inputs {sorted(missing)} (e.g. a depth sidecar)")
    lq, extras = execute_all(image, record["ops"], inputs)
    if list(lq.shape[:2]) != list(record["lq_size"]):
        raise ValueError(f"replay produced {lq.shape[:2]}, record says {record['lq_size']}")
    return Sample(lq, dict(record), extras)


def replay(image: np.ndarray, record: Mapping[str, Any]) -> np.ndarray:
    """Re-run a record on the same HQ image: bit-identical to the original LQ."""
    return replay_sample(image, record).lq
