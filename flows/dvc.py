"""Recording flow outputs in DVC, so a deployment run is versioned like `dvc repro`."""

from __future__ import annotations

import subprocess
import sys


def record_in_dvc(root: str, stages: list[str]) -> None:
    """`dvc commit` the stages so a build made outside `dvc repro` is versioned the same way."""
    completed = subprocess.run(
        [sys.executable, "-m", "dvc", "commit", "--force", *stages],
        cwd=root, capture_output=True, text=True, check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"dvc commit {' '.join(stages)} failed: {completed.stderr.strip()}")
