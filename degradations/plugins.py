"""Plugins: degradation types (or ops, or pipelines) from outside this package.

A plugin is any module that registers with the decorators when imported. It is found
through the ``uir_forge.degradations`` entry point group of an installed package, named in
``UIR_PLUGINS`` (comma-separated module paths), in a preset's ``plugins:`` list, or by
``uir --plugin MODULE``.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Iterable
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "uir_forge.degradations"


def load_modules(modules: Iterable[str]) -> None:
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ImportError(f"cannot load degradation plugin {module!r}: {err}") from err


def load_installed() -> list[str]:
    """Import every entry-point plugin; a broken one warns instead of breaking the engine."""
    loaded = []
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as err:  # a third-party plugin may fail in any way
            warnings.warn(f"degradation plugin {entry.name!r} failed to load: {err}",
                          stacklevel=2)
            continue
        loaded.append(entry.name)
    env = os.environ.get("UIR_PLUGINS", "")
    load_modules(m.strip() for m in env.split(",") if m.strip())
    return loaded
