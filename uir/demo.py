"""Locate the embedded demo photographs so every stage can run offline."""

from __future__ import annotations

import os
from pathlib import Path

from uir.imageio import SIDECAR_SUFFIXES

DEMO_DIR = Path(__file__).resolve().parent.parent / "data" / "demo"
"""The in-repository copy; the package is installed editable, so it sits next to `uir/`."""

DEMO_DIR_ENV = "UIR_DEMO_DIR"
PHOTO_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"})


def demo_dir() -> Path:
    """Return the demo folder; `UIR_DEMO_DIR` wins so installed or CI copies can point elsewhere."""
    override = os.environ.get(DEMO_DIR_ENV)
    return Path(override) if override else DEMO_DIR


def demo_images() -> list[Path]:
    """List the demo photographs in a stable order, leaving out sidecars such as `.depth.png`."""
    folder = demo_dir()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"demo data folder {folder} is missing; restore data/demo from the repository "
            f"or set {DEMO_DIR_ENV} to a folder of photographs"
        )
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file()
        and path.suffix.lower() in PHOTO_SUFFIXES
        and not path.name.lower().endswith(SIDECAR_SUFFIXES)
    )
