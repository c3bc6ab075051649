"""Downstream training orchestration (issue 6): the ``training:`` config, the steps a DVC stage
or a Prefect task runs (controller, embeddings, restorers, evaluation), torchrun launching,
resume and reuse. Tiny models on a tiny dataset built from the embedded demo photos."""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from degradations.config import merge
from degradations.names import DACLIP_TYPES
from uir.dataset.build import run_build
from uir.dataset.config import ConfigError, load_dataset_config
from uir.training.config import load_training_config
from uir.training.dvc_stage import check_dvc_stage
from uir.training.job import TrainingError, load_training_job
from uir.training.launch import launch, torchrun_command
from uir_models.data import EmbeddingTable

LOOP = {"checkpoint_every": 2, "log_every": 1, "eval_every": 2, "seed": 0}
PROFILE: dict[str, Any] = {
    "dataset": "tiny",
    "nproc": 1,
    "device": "cpu",
    "embed_batch": 8,
    "controller": {
        "model": "daclip-tiny",
        "data": {"batch_size": 4, "crop_size": 64, "num_workers": 0, "balance": "types"},
        "train": {"iterations": 4, "lr": 1e-3, **LOOP},
    },
    "restorers": {
        "nafnet": {
            "model": "nafnet-daclip-tiny",
            "data": {"batch_size": 2, "crop_size": 32, "num_workers": 0},
            "train": {"iterations": 4, "lr": 1e-3, **LOOP},
        },
    },
    "evaluate": {"split": "val", "lpips": False, "crop_size": 32, "batch_size": 4},
}


@pytest.fixture(scope="module")
def tiny_params(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A params.yaml with a 21-sample ten-type dataset (built once) and a tiny profile."""
    root = tmp_path_factory.mktemp("training")
    params = root / "params.yaml"
    dataset = {
        "version": "0.1.0",
        "seed": 7,
        "output": "shards",
        "sources": [{"kind": "demo"}],
        "splits": {"train": 0.6, "val": 0.2, "test": 0.2},
        "captions": {"source": "sidecar-or-blip"},
        "synthesis": {
            "variants": 3,
            "crop": {"mode": "random", "size": 64},
            "recipes": [{"preset": "daclip", "weight": 1}],
        },
        "shards": {"max_count": 8},
        "runner": {"kind": "sequential", "workers": 1},
    }
    content = {
        "datasets": {"tiny": dataset},
        "training": {"profile": "tiny", "profiles": {"tiny": PROFILE}},
    }
    params.write_text(yaml.safe_dump(content, sort_keys=False))
    run_build(load_dataset_config("tiny", params), workers=1)
    return params


def with_profile(params: Path, out: Path, changes: dict[str, Any]) -> Path:
    """A copy of ``params`` whose tiny profile has ``changes`` and writes under ``out``."""
    content = yaml.safe_load(params.read_text())
    content["datasets"]["tiny"]["output"] = str(params.parent / "shards")
    training = content["training"]
    training.update(output=str(out / "models"), reports=str(out / "reports"))
    training["profiles"]["tiny"] = merge(copy.deepcopy(PROFILE), changes)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "params.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------------------------------------
# configuration


def test_config_errors_name_the_key(tiny_params: Path, tmp_path: Path) -> None:
    unknown = r"controller: .*data: unknown data loader keys \['batchsize'\]"
    with pytest.raises(ConfigError, match=unknown):
        load_training_config(tiny_params, overrides={"controller.data.batchsize": 4})
    with pytest.raises(ConfigError, match=r"controller: .*train: need lr > 0"):
        load_training_config(tiny_params, overrides={"controller.train.lr": -1})
    with pytest.raises(ConfigError, match="profile 'nope'"):
        load_training_config(tiny_params, profile="nope")
    with pytest.raises(ConfigError, match="rdzv_endpoint"):
        load_training_config(tiny_params, overrides={"nnodes": 2})
    with pytest.raises(ConfigError, match="sde"):
        load_training_config(tiny_params, overrides={"restorers.nafnet.sde": {"steps": 4}})
    with pytest.raises(ConfigError, match="no 'training:'"):
        (tmp_path / "p.yaml").write_text("datasets: {}\n")
        load_training_config(tmp_path / "p.yaml")


def test_repository_profiles_load() -> None:
    """Both shipped profiles validate, and the paper profile has the reference's sizes."""
    repo = Path(__file__).resolve().parents[1] / "params.yaml"
    demo = load_training_config(repo, profile="demo").selected
    paper = load_training_config(repo, profile="paper").selected
    assert demo.controller.model == "daclip-demo" and demo.nproc == 1
    assert paper.controller.model == "daclip-vit-b-32" and paper.nproc > 1
    assert paper.controller.data["crop_size"] == 224
    assert {r.method for r in paper.restorers.values()} == {"direct", "sde"}
    assert paper.restorers["irsde"].sde["max_sigma"] == 50


def test_dvc_stages_must_declare_what_the_profile_reads_and_writes(tmp_path: Path) -> None:
    """Under `dvc repro` (DVC_STAGE, DVC_ROOT) a training step whose dvc.yaml stage misses the
    profile's dataset or output folder stops before it trains; the shipped files agree."""
    repo = Path(__file__).resolve().parents[1]
    env = {"DVC_ROOT": str(repo)}
    stages = {"controller": "train_controller", "restorer": "train_restorer",
              "evaluate": "evaluate"}
    shipped = load_training_job(repo / "params.yaml")
    for step, stage in stages.items():
        check_dvc_stage(shipped, step, {**env, "DVC_STAGE": stage})

    other_data = load_training_job(repo / "params.yaml", overrides={"dataset": "demo"})
    with pytest.raises(TrainingError, match=r"'train_controller' .*deps lack data/shards/demo\b"):
        check_dvc_stage(other_data, "controller", {**env, "DVC_STAGE": "train_controller"})
    check_dvc_stage(other_data, "controller", {})  # not under DVC: nothing to check
    check_dvc_stage(other_data, "controller", {**env, "DVC_STAGE": "sub/dvc.yaml:train"})
    templated = tmp_path / "templated"
    templated.mkdir()
    (templated / "dvc.yaml").write_text(
        "stages:\n  train_controller:\n    cmd: uir train controller\n"
        "    deps: ['${training.data}']\n    outs: [models/train/controller]\n"
    )
    check_dvc_stage(other_data, "controller", {"DVC_ROOT": str(templated),
                                               "DVC_STAGE": "train_controller"})

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["training"]["output"] = str(tmp_path / "elsewhere")
    for dataset in params["datasets"].values():
        dataset["output"] = str(repo / dataset["output"])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    moved = load_training_job(tmp_path / "params.yaml")
    with pytest.raises(TrainingError, match=r"outs lack .*elsewhere/restorers"):
        check_dvc_stage(moved, "restorer", {**env, "DVC_STAGE": "train_restorer"})
    with pytest.raises(TrainingError, match=r"deps lack .*elsewhere/controller"):
        check_dvc_stage(moved, "evaluate", {**env, "DVC_STAGE": "evaluate"})


def test_torchrun_command_is_multi_node_ready(tiny_params: Path) -> None:
    job = load_training_job(
        tiny_params, overrides={"nproc": 8, "nnodes": 2, "rdzv_endpoint": "node0:29400"}
    )
    command = torchrun_command(job, "controller", profile=None, overrides={"nproc": 8})
    assert "--nproc-per-node=8" in command and "--nnodes=2" in command
    assert "--rdzv-endpoint=node0:29400" in command and "--standalone" not in command
    assert command[command.index("-m", 3) + 1] == "uir.training.launch"
    assert json.loads(command[command.index("--overrides") + 1]) == {"nproc": 8}


# ---------------------------------------------------------------------------------------------
# the chain, in process


def test_controller_restorer_evaluate_chain(
    tiny_params: Path, tmp_path: Path, one_torch_thread: None
) -> None:
    params = with_profile(tiny_params, tmp_path, {})
    job = load_training_job(params)
    with pytest.raises(TrainingError, match="uir train controller"):
        launch("restorer", params)  # nothing to embed with yet

    first = launch("controller", params)["controller"]
    assert first["step"] == 4 and first["resumed_from"] == 0
    assert "top1" in first["val"]
    rows = read_csv(job.controller_dir / "log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert {"content_loss", "degradation_loss"} <= set(rows[0])

    again = launch("controller", params)["controller"]  # complete: nothing to do
    assert again["resumed_from"] == 4 and again["step"] == 4

    trained = launch("restorer", params)
    assert trained["embeddings"]["skipped"] is False
    manifest = json.loads((job.shards_dir / "manifest.json").read_text())
    table = EmbeddingTable.load(job.embeddings)
    assert len(table.keys) == manifest["counts"]["samples"]
    assert table.degra.shape == (len(table.keys), 64)
    assert torch.allclose(table.degra.norm(dim=-1), torch.ones(len(table.keys)), atol=1e-4)
    assert trained["nafnet"]["step"] == 4
    assert launch("restorer", params)["embeddings"]["skipped"] is True  # same controller

    metrics = launch("evaluate", params)["evaluate"]
    on_disk = json.loads((job.reports_dir / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    controller = metrics["controller"]
    val = manifest["counts"]["splits"]["val"]
    assert controller["count"] == val and controller["chance"] == pytest.approx(0.1)
    assert set(controller["per_class"]) <= set(DACLIP_TYPES)
    assert sum(c["support"] for c in controller["per_class"].values()) == val
    nafnet = metrics["restorers"]["nafnet"]
    assert nafnet["count"] == val and nafnet["gain"] == pytest.approx(
        nafnet["psnr"] - nafnet["psnr_identity"], abs=1e-3
    )
    assert metrics["lpips_skipped"].startswith("LPIPS skipped")
    confusion = read_csv(job.reports_dir / "controller_confusion.csv")
    assert len(confusion) == val and set(confusion[0]) == {"actual", "predicted"}
    types = read_csv(job.reports_dir / "restorer_nafnet_types.csv")
    assert {r["type"] for r in types} == set(nafnet["per_type"])

    # A retrained controller (another seed) invalidates the embeddings.
    changed = with_profile(tiny_params, tmp_path, {"controller.train.seed": 1})
    assert launch("controller", changed)["controller"]["resumed_from"] == 0
    assert launch("restorer", changed)["embeddings"]["skipped"] is False


def test_restorer_resume_matches_an_uninterrupted_run(
    tiny_params: Path, tmp_path: Path, one_torch_thread: None
) -> None:
    """Stop the restorer after 2 of 4 steps, resume: the same losses as one straight run."""
    straight = with_profile(tiny_params, tmp_path / "straight", {})
    stopped = with_profile(tiny_params, tmp_path / "stopped", {})
    for params in (straight, stopped):
        launch("controller", params)
    launch("restorer", straight)
    launch("restorer", stopped, stop_after=2)
    resumed = launch("restorer", stopped)
    assert resumed["nafnet"]["resumed_from"] == 2
    losses = [
        [r["loss"] for r in read_csv(p.parent / "models/restorers/nafnet/log.csv")]
        for p in (straight, stopped)
    ]
    assert len(losses[0]) == 4 and losses[0] == losses[1]


def test_sde_restorer_and_clip_loss(
    tiny_params: Path, tmp_path: Path, one_torch_thread: None
) -> None:
    """The IR-SDE restorer trains and is evaluated by posterior sampling; a NAFNet with
    Perceive-IR's L_clip logs the extra term (prompts from a quality entry's perceiver)."""
    from uir.quality.job import load_job
    from uir.quality.perceive import PROMPTS, _perceiver

    changes = {
        "restorers": {
            "sde": {
                "model": "irsde-daclip-tiny",
                "method": "sde",
                "sde": {"steps": 6},
                "eval_steps": 3,
                "data": {"batch_size": 2, "crop_size": 32, "num_workers": 0},
                "train": {"iterations": 2, "lr": 1e-3, **LOOP},
            },
            "nafnet": {"clip_loss": {"quality": "tiny", "weight": 0.5}},
        }
    }
    params = with_profile(tiny_params, tmp_path, changes)
    content = yaml.safe_load(params.read_text())
    content["quality"] = {
        "tiny": {
            "output": str(tmp_path / "labelled"),
            "work": str(tmp_path / "work"),
            "models": str(tmp_path / "quality-models"),
            "reports": str(tmp_path / "quality-reports"),
            "perceiver": {"clip_model": "uir-clip-tiny", "pretrained": None, "n_ctx": 4},
        }
    }
    params.write_text(yaml.safe_dump(content, sort_keys=False))
    quality = load_job("tiny", params)
    launch("controller", params)
    with pytest.raises(TrainingError, match="learned prompts"):
        launch("restorer", params)
    quality.perceiver_dir.mkdir(parents=True)
    _perceiver(quality).save_context(quality.perceiver_dir / PROMPTS)  # untrained prompts

    trained = launch("restorer", params)
    assert trained["sde"]["step"] == 2 and trained["nafnet"]["step"] == 4
    job = load_training_job(params)
    rows = read_csv(job.restorer_dir("nafnet") / "log.csv")
    assert all(0.0 < float(r["clip_loss"]) < 1.0 for r in rows)
    assert all(float(r["loss"]) > float(r["clip_loss"]) * 0.5 for r in rows)
    metrics = launch("evaluate", params)["evaluate"]
    assert metrics["restorers"]["sde"]["count"] == metrics["controller"]["count"]
    sde = metrics["restorers"]["sde"]
    assert math.isfinite(sde["psnr"]) and set(sde["per_type"]) <= set(DACLIP_TYPES)


def test_controller_under_torchrun_with_two_processes(
    tiny_params: Path, tmp_path: Path
) -> None:
    """The launcher's torchrun route (2 CPU processes, gloo) trains and reports rank 0's
    result; the checkpoint records world size 2."""
    params = with_profile(tiny_params, tmp_path, {"nproc": 2, "controller.train.iterations": 2})
    result = launch("controller", params)["controller"]
    assert result["step"] == 2
    job = load_training_job(params)
    rows = read_csv(job.controller_dir / "log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2]
