"""Strict loading of declarative configs: a misspelt key in a YAML file fails loudly, naming
itself and what the config does accept, instead of being silently ignored."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any


def check_keys(config_type: type, values: Mapping[str, Any], what: str) -> None:
    """Raise ``ValueError`` when ``values`` has keys that are not fields of ``config_type``."""
    known = {f.name for f in fields(config_type)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {what} keys {unknown}; known: {sorted(known)}")
