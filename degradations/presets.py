"""Presets: named configs for a pipeline, kept as YAML so a new preset needs no code.

A preset name, a pipeline name (its defaults) or a path to a user's YAML file all resolve
to (pipeline, config overrides, plugin modules).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from degradations.plugins import load_modules
from degradations.registry import PIPELINES

PRESET_DIR = Path(__file__).with_name("presets")


@dataclass(frozen=True)
class Preset:
    name: str
    pipeline: str
    config: dict[str, Any] = field(default_factory=dict)
    plugins: tuple[str, ...] = ()


def available_presets() -> dict[str, Path]:
    return {path.stem: path for path in sorted(PRESET_DIR.glob("*.yaml"))}


def _from_file(path: Path) -> Preset:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot read preset: {err}") from None
    if not isinstance(data, dict) or "pipeline" not in data:
        raise ValueError(f"{path}: a preset needs a 'pipeline' key")
    unknown = set(data) - {"pipeline", "config", "plugins"}
    if unknown:
        raise ValueError(f"{path}: unknown preset keys {sorted(unknown)}")
    return Preset(path.stem, str(data["pipeline"]), dict(data.get("config") or {}),
                  tuple(data.get("plugins") or ()))


def resolve_preset(name: str) -> Preset:
    """Look ``name`` up as a built-in preset, a YAML path, then a bare pipeline."""
    presets = available_presets()
    if name in presets:
        preset = _from_file(presets[name])
    elif name.endswith((".yaml", ".yml")):
        preset = _from_file(Path(name))
    elif name in PIPELINES:
        return Preset(name, name)
    else:
        known = sorted({*presets, *PIPELINES})
        raise KeyError(f"unknown pipeline or preset {name!r}; choose from {', '.join(known)}")
    load_modules(preset.plugins)
    if preset.pipeline not in PIPELINES:
        raise KeyError(f"preset {name!r} names unknown pipeline {preset.pipeline!r}")
    return preset
