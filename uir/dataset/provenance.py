"""Which code made a dataset: recorded per sample and in the manifest.

Bit-exact replay depends on the numeric libraries as well as on our code, so their versions
travel with every sample; the git commit goes only in the manifest so that shards do not change
with unrelated commits.
"""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path

import cv2
import imagecodecs
import numpy as np

_REPO = Path(__file__).resolve().parents[2]


@functools.cache
def library_versions() -> dict[str, str]:
    return {
        "uir-forge": metadata.version("uir-forge"),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "imagecodecs": imagecodecs.__version__,
        "libjpeg-turbo": str(imagecodecs.jpeg8_version()),
    }


def code_fingerprint() -> str:
    """Part of each chunk's digest: a chunk made by other library versions is remade."""
    return ";".join(f"{name}={version}" for name, version in sorted(library_versions().items()))


@functools.cache
def git_commit() -> str | None:
    """The commit of the checkout (with a ``-dirty`` mark), or None outside a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(_REPO), "rev-parse", "HEAD"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(_REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit
