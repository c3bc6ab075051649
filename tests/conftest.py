"""Shared, generic test helpers: running the installed CLI in an isolated environment, writing
params files, making small test photographs, building shards from real pairs and
fingerprinting folders."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from uir.dataset.build import run_build
from uir.dataset.config import load_dataset_config

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
"""The bin folder of the interpreter running the tests: where `uir` and `dvc` are installed."""


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """The CI box is shared: one torch thread is faster than contended ones for tiny models."""
    import torch  # only the model tests pay for the import

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def venv_bin() -> Path:
    return VENV_BIN


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for subprocesses: the venv first on PATH, offline model hubs, no analytics,
    and Prefect/DVC state kept under tmp_path instead of the user's home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DVC_"))}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        PREFECT_HOME=str(tmp_path / ".prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        # Two cores shared with other jobs: a fresh ephemeral server (new database) can take
        # longer than Prefect's 20 s default to answer.
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(tmp_path / ".dvc-site-cache"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def run_cli(cli_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run a console script of the venv (``run_cli("uir", "verify", DIR)``), capturing text."""

    def run(
        program: str, *args: Any, cwd: Path | None = None, check: bool = True,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        command = [str(VENV_BIN / program), *map(str, args)]
        done = subprocess.run(
            command, cwd=cwd, env=cli_env, capture_output=True, text=True, timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} exited {done.returncode}\n"
                f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}"
            )
        return done

    return run


@pytest.fixture(scope="session")
def write_params() -> Callable[..., Path]:
    """Write ``FOLDER/params.yaml`` holding the given datasets; returns its path."""

    def write(folder: Path, datasets: dict[str, dict[str, Any]]) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "params.yaml"
        path.write_text(yaml.safe_dump({"datasets": datasets}, sort_keys=False))
        return path

    return write


@pytest.fixture(scope="session")
def build_pairs_dataset(write_params: Callable[..., Path]) -> Callable[..., Path]:
    """Shard real pairs already under ``root`` with the real builder (no synthesis, sidecar
    captions, one process); returns the shard folder. Each source is ``(name, folder, label,
    split)`` with its images in ``folder/lq`` and ``folder/gt``."""

    def build(
        root: Path, name: str, sources: Sequence[tuple[str, str, str, str]], max_count: int
    ) -> Path:
        params = write_params(root, {name: {
            "output": "out",
            "sources": [
                {"kind": "pairs", "name": source, "lq": f"{folder}/lq", "gt": f"{folder}/gt",
                 "label": label, "split": split}
                for source, folder, label, split in sources
            ],
            "ingest": {"min_size": 8},
            "captions": {"source": "sidecar"},
            "synthesis": {"variants": 0},
            "shards": {"max_count": max_count},
            "runner": {"kind": "sequential"},
        }})
        return run_build(load_dataset_config(name, params)).output

    return build


def photo_pixels(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth colourful image with some texture, different for every seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, 3)
    freq = rng.uniform(0.03, 0.15, 3)
    channels = [127 + 100 * np.sin(freq[c] * x + phase[c]) * np.cos(freq[c] * 0.7 * y)
                for c in range(3)]
    image = np.stack(channels, axis=-1) + rng.normal(0, 8, (height, width, 3))
    return image.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def make_photo() -> Callable[..., Path]:
    """Save a test photograph (any Pillow format by suffix) and optionally its caption sidecar."""

    def make(
        path: Path, size: tuple[int, int] = (64, 64), seed: int = 0,
        caption: str | None = None, pixels: np.ndarray | None = None, **save: Any,
    ) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        array = photo_pixels(*size, seed) if pixels is None else pixels
        Image.fromarray(array).save(path, **save)
        if caption is not None:
            path.with_suffix(".txt").write_text(caption + "\n")
        return path

    return make


def sha256_file(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


@pytest.fixture(scope="session")
def folder_digests() -> Callable[[Path], dict[str, str]]:
    """sha256 of every visible regular file directly in a folder, by name."""

    def digests(folder: Path) -> dict[str, str]:
        return {
            p.name: sha256_file(p)
            for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".")
        }

    return digests


@pytest.fixture(scope="session")
def file_identity() -> Callable[[Sequence[Path]], dict[str, tuple[int, int]]]:
    """(inode, mtime_ns) of files that exist: unchanged means the file was not rewritten."""

    def identity(paths: Sequence[Path]) -> dict[str, tuple[int, int]]:
        found = {}
        for path in paths:
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            found[path.name] = (stat.st_ino, stat.st_mtime_ns)
        return found

    return identity


# CI-sized quality labelling for clones: the machinery runs end to end in seconds.
QUICK_QUALITY = {
    "proxy.iterations": 12, "proxy.checkpoint_every": 5, "proxy.batch_size": 4,
    "proxy.patch_size": 32, "perceiver.iterations": 12, "perceiver.batch_size": 4,
    "perceiver.checkpoint_every": 5,
}


QUICK_TRAINING_DATA = {"synthesis.variants": 4}
"""The training demo's dataset at CI size: 28 samples, every split non-empty."""
QUICK_TRAINING = {
    "controller.data.batch_size": 4, "controller.data.num_workers": 0,
    "controller.train.iterations": 6, "controller.train.checkpoint_every": 3,
    "controller.train.log_every": 2, "controller.train.eval_every": 3,
    "restorers.nafnet.data.batch_size": 4, "restorers.nafnet.data.num_workers": 0,
    "restorers.nafnet.train.iterations": 6, "restorers.nafnet.train.checkpoint_every": 3,
    "restorers.nafnet.train.log_every": 2, "restorers.nafnet.train.eval_every": 3,
    "evaluate.lpips": False,
}
"""The demo training profile at CI size (a few steps of each model)."""


def _clone_working_tree(
    repo_root: Path, clone: Path, demo_changes: dict[str, Any],
    quality_changes: dict[str, Any] | None = None,
    training_changes: dict[str, Any] | None = None,
) -> Path:
    """The working tree (tracked and untracked, not ignored) as a fresh one-commit git repo,
    with ``demo_changes`` (dotted keys) applied to the demo dataset, ``quality_changes``
    (default: ``QUICK_QUALITY``) to its quality entry, ``training_changes`` (default:
    ``QUICK_TRAINING``) to the demo training profile, whose dataset is made CI-sized too, and
    the other datasets dropped, so uncommitted work is what the clone runs."""
    from degradations.config import merge

    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo_root,
        capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for rel in filter(None, listed):
        source = repo_root / rel
        if source.is_file():  # tracked files deleted in the working tree are skipped
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / rel)
    params_path = clone / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    training = params["training"]
    trained_on = training["profiles"]["demo"]["dataset"]
    params["datasets"] = {
        "demo": merge(params["datasets"]["demo"], demo_changes),
        trained_on: merge(params["datasets"][trained_on], QUICK_TRAINING_DATA),
    }
    quality = QUICK_QUALITY if quality_changes is None else quality_changes
    params["quality"] = {"demo": merge(params["quality"]["demo"], quality)}
    changes = QUICK_TRAINING if training_changes is None else training_changes
    training["profile"] = "demo"
    training["profiles"]["demo"] = merge(training["profiles"]["demo"], changes)
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=UIR Test", "-c", "user.email=test@example.invalid"]
    subprocess.run([*git, "init", "-q"], cwd=clone, check=True)
    subprocess.run([*git, "add", "-A"], cwd=clone, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "clone"], cwd=clone, check=True)
    return clone


@pytest.fixture(scope="session")
def make_clone() -> Callable[..., Path]:
    return _clone_working_tree
