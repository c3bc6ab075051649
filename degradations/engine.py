"""synthesize and replay: the record is the program, so replaying it is running it again."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from degradations.config import build_config
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


def execute(image: np.ndarray, ops: list[dict[str, Any]]) -> np.ndarray:
    """Run recorded ops on a uint8 RGB image and quantise the result to uint8."""
    current = to_float(image)
    for index, entry in enumerate(ops):
        op = get_op(entry["op"])
        try:
            current = op.fn(current, **entry.get("params", {}))
        except Exception as err:
            raise ValueError(f"op {index} ({op.name}) failed: {err}") from err
    return to_uint8(current)


def synthesize(
    image: np.ndarray, pipeline: str, seed: int, **overrides: Any
) -> tuple[np.ndarray, Record]:
    """Degrade ``image`` with a registered pipeline; every random choice comes from ``seed``.

    ``overrides`` change config fields, nested by dicts or dotted names
    (``scale=2``, ``**{"second.blur_prob": 1.0}``).
    """
    _check_image(image)
    spec = get_pipeline(pipeline)
    config = build_config(spec.config_type, overrides)
    shape = (int(image.shape[0]), int(image.shape[1]))
    plan = spec.planner(shape, generator(seed), config)
    lq = execute(image, plan.ops)
    record = {
        "format": RECORD_FORMAT,
        "pipeline": spec.name,
        "pipeline_version": spec.version,
        "seed": int(seed),
        "overrides": dict(overrides),
        "hq_size": list(shape),
        "lq_size": [int(lq.shape[0]), int(lq.shape[1])],
        "prompt": plan.prompt,
        "labels": list(plan.labels),
        "info": plan.info,
        "ops": plan.ops,
    }
    return lq, json.loads(json.dumps(record))


def replay(image: np.ndarray, record: Mapping[str, Any]) -> np.ndarray:
    """Re-run a record on the same HQ image: bit-identical to the original LQ."""
    _check_image(image)
    if record.get("format") != RECORD_FORMAT:
        raise ValueError(f"not a degradation record (format {record.get('format')!r})")
    expected = tuple(record["hq_size"])
    if image.shape[:2] != expected:
        raise ValueError(
            f"record was made for a {expected[0]}x{expected[1]} image, "
            f"got {image.shape[0]}x{image.shape[1]}"
        )
    lq = execute(image, record["ops"])
    if list(lq.shape[:2]) != list(record["lq_size"]):
        raise ValueError(f"replay produced {lq.shape[:2]}, record says {record['lq_size']}")
    return lq
