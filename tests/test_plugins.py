"""Plugins: an out-of-tree degradation type gets prompts, records, replay and listing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).parents[1]
EXAMPLE = REPO / "examples" / "uir-posterize"


def run_uir(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "uir.cli", *args], capture_output=True,
                          text=True, env=env, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """pip-install the example plugin into a private target dir (no network, no deps)."""
    root = tmp_path_factory.mktemp("plugin")
    source = root / "src"
    shutil.copytree(EXAMPLE, source)
    site = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(site), str(source)],
                   check=True, capture_output=True)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    gradient = np.linspace(0, 255, 64, dtype=np.float32)
    image = np.stack([np.tile(gradient, (64, 1))] * 3, axis=-1).astype(np.uint8)
    path = tmp_path / "ramp.png"
    Image.fromarray(image).save(path)
    return path


def test_entry_point_plugin_is_listed_parsed_applied_and_replayed(installed, photo, tmp_path):
    listing = run_uir("list", env=installed)
    assert listing.returncode == 0 and "posterized" in listing.stdout

    parsed = run_uir("prompt", "parse", "deposterize with levels 4; Deblur", env=installed)
    assert json.loads(parsed.stdout)["clauses"][0] == {"type": "posterized",
                                                        "params": {"levels": 4}}
    bad = run_uir("prompt", "parse", "Deposterize with levels 1", env=installed)
    assert bad.returncode == 2 and "levels" in bad.stderr

    out = tmp_path / "lq.png"
    made = run_uir("degrade", str(photo), str(out), "--pipeline", "prompt",
                   "--prompt", "Deposterize with levels 4", env=installed)
    assert made.returncode == 0, made.stderr
    lq = np.asarray(Image.open(out))
    assert len(np.unique(lq)) == 4
    replayed = tmp_path / "again.png"
    assert run_uir("replay", str(out.with_suffix(".json")), str(photo), str(replayed),
                   env=installed).returncode == 0
    assert np.array_equal(lq, np.asarray(Image.open(replayed)))


def test_plugin_by_module_path_flag_env_and_preset(photo, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLE), str(REPO)])}
    env.pop("UIR_PLUGINS", None)
    assert "posterized" not in run_uir("list", env=env).stdout
    assert "posterized" in run_uir("--plugin", "uir_posterize", "list", env=env).stdout
    assert "posterized" in run_uir("list", env={**env, "UIR_PLUGINS": "uir_posterize"}).stdout

    preset = tmp_path / "banding.yaml"
    preset.write_text("pipeline: mixed\nplugins: [uir_posterize]\n"
                      "config: {types: [posterized, noisy], count: [2, 2]}\n")
    out = tmp_path / "mixed.png"
    made = run_uir("degrade", str(photo), str(out), "--pipeline", str(preset), env=env)
    assert made.returncode == 0, made.stderr
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["labels"] == ["noisy", "posterized"] and record["preset"] == "banding"
    assert record["prompt"].startswith("Denoise with sigma")


def test_missing_plugin_module_is_a_clear_error(photo):
    result = run_uir("--plugin", "no_such_plugin_module", "list", env=dict(os.environ))
    assert result.returncode == 2
    assert "no_such_plugin_module" in result.stderr and "Traceback" not in result.stderr
