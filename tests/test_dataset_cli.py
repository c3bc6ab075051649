"""The build commands' error handling and the inspect output, in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from uir.cli import main
from uir.demo import demo_images

TINY = {"version": "1.2.3", "seed": 5, "sources": [{"kind": "demo"}],
        "captions": {"source": "sidecar", "cache": "cache/captions.sqlite"},
        "synthesis": {"variants": 1, "crop": {"mode": "random", "size": 64},
                      "recipes": [{"preset": "tip"}]},
        "splits": {"train": 0.6, "val": 0.2, "test": 0.2},
        "shards": {"max_count": 3}, "runner": {"kind": "sequential", "workers": 1}}


def _params(tmp_path: Path, **changes) -> Path:
    entry = {**TINY, "output": "out", **changes}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"datasets": {"tiny": entry}}))
    return path


@pytest.mark.parametrize(
    ("changes", "args", "message"),
    [
        ({}, ["nosuch"], "no dataset 'nosuch'"),
        ({"synthesis": {"variants": 1, "recipes": [{"preset": "nope"}]}}, ["tiny"], "nope"),
        ({"shards": {"max_cout": 3}}, ["tiny"], "max_cout"),
        ({"sources": [{"kind": "hq", "name": "x", "paths": ["missing/"]}]}, ["tiny"],
         "does not exist"),
    ],
)
def test_build_errors_are_one_line(tmp_path, capsys, changes, args, message):
    params = _params(tmp_path, **changes)
    code = main(["build", *args, "--params", str(params), "--engine", "local"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_build_then_inspect(tmp_path, capsys):
    params = _params(tmp_path)
    assert main(["build", "--params", str(params), "--engine", "local"]) == 0
    out = capsys.readouterr().out
    n = len(demo_images())
    assert f"{n} samples" in out and f"seen {n}, accepted {n}, rejected 0" in out
    assert main(["inspect", str(tmp_path / "out"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["dataset"] == "tiny" and info["version"] == "1.2.3" and info["samples"] == n
    assert sum(info["splits"].values()) == n and info["shards"] >= 3
    assert main(["inspect", str(tmp_path / "out")]) == 0
    assert f"samples {n}" in capsys.readouterr().out
    assert (tmp_path / "cache" / "captions.sqlite").parent.is_dir()


def test_inspect_and_verify_refuse_a_folder_without_manifest(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert main(["verify", str(tmp_path)]) == 1
    assert "no manifest.json" in capsys.readouterr().out
