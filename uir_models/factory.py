"""Model factory, open_clip style: a name resolves to a declarative YAML config.

``create_model("nafnet-tiny")`` and ``create_model("nafnet-proxy")`` run the same code with
different sizes, so tests on the tiny model cover the paper-sized one; ``daclip-tiny`` and
``daclip-vit-b-32`` likewise build the DA-CLIP controller over open_clip. Configs live in
``uir_models/model_configs/<name>.yaml`` (package data) and carry an ``arch`` key plus that
architecture's config fields; a path to a YAML file or a plain mapping works as well.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from uir_models.archs.nafnet import NAFNet, NAFNetConfig

CONFIG_DIR = Path(__file__).parent / "model_configs"


def _build_nafnet(params: Mapping[str, Any]) -> nn.Module:
    return NAFNet(NAFNetConfig.from_dict(params))


def _build_daclip(params: Mapping[str, Any]) -> nn.Module:
    # Imported here: open_clip takes seconds to import and restorer-only users never need it.
    from uir_models.archs.daclip import DaClipConfig, build_daclip

    return build_daclip(DaClipConfig.from_dict(params))


def _build_nafnet_daclip(params: Mapping[str, Any]) -> nn.Module:
    from uir_models.archs.nafnet_daclip import NAFNetDaClip, NAFNetDaClipConfig

    return NAFNetDaClip(NAFNetDaClipConfig.from_dict(params))


def _build_irsde_unet(params: Mapping[str, Any]) -> nn.Module:
    from uir_models.archs.irsde_unet import ConditionalUNet, ConditionalUNetConfig

    return ConditionalUNet(ConditionalUNetConfig.from_dict(params))


# arch name -> builder taking the config without its "arch" key (and raising on unknown keys).
ARCHS: dict[str, Callable[[Mapping[str, Any]], nn.Module]] = {
    "nafnet": _build_nafnet,
    "daclip": _build_daclip,
    "nafnet_daclip": _build_nafnet_daclip,
    "irsde_unet": _build_irsde_unet,
}


def list_models() -> list[str]:
    """Names of the bundled configs, sorted."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def get_model_config(name: str) -> dict[str, Any]:
    """Load a bundled config by name, or a YAML file by path."""
    path = Path(name)
    if not (path.suffix in {".yaml", ".yml"} and path.is_file()):
        path = CONFIG_DIR / f"{name}.yaml"
        if not path.is_file():
            raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    cfg = yaml.safe_load(path.read_text())
    if not isinstance(cfg, dict):
        raise ValueError(f"model config {path} must be a mapping, got {type(cfg).__name__}")
    return cfg


def create_model(
    name_or_config: str | Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> nn.Module:
    """Build a model from a config name, a YAML path or a mapping; ``overrides`` patch keys.

    Raises ``ValueError`` for an unknown name, an unknown ``arch`` or unknown config keys.
    """
    if isinstance(name_or_config, str):
        cfg = get_model_config(name_or_config)
    elif isinstance(name_or_config, Mapping):
        cfg = dict(name_or_config)
    else:
        raise TypeError(f"expected a model name or a mapping, got {type(name_or_config)}")
    cfg.update(overrides or {})
    arch = cfg.pop("arch", "nafnet")
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; known archs: {', '.join(sorted(ARCHS))}")
    return ARCHS[arch](cfg)
