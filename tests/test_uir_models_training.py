"""The training loop (uir_models.training): exact resume in one process and under a 2-rank
torchrun on CPU (gloo) with uneven shards, a restorer that beats the identity on val, EMA
math, and the checkpoint's failure modes. The torchrun runs have a deadline, so a hang fails
the test instead of stalling CI."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from uir_models.data import eval_loader, train_loader
from uir_models.factory import create_model
from uir_models.training import (
    CheckpointError,
    ModelEma,
    RestorerTask,
    TrainConfig,
    lr_factor,
    shutdown_distributed,
    train,
)

TYPES = ["low-light"]
TRAIN_PAIRS, VAL_PAIRS, SHARD_SIZE, SIZE = 24, 4, 8, 32
DEADLINE_S = 150


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, make_photo, build_pairs_dataset) -> Path:
    """A learnable degradation (LQ = HQ at 60% brightness): 24 train pairs in 3 shards (uneven
    for 2 ranks) and 4 val pairs, built by the real builder."""
    root = tmp_path_factory.mktemp("train-shards")
    for split, count, offset in (("train", TRAIN_PAIRS, 0), ("val", VAL_PAIRS, 100)):
        for index in range(count):
            gt = make_photo(
                root / split / "gt" / f"{index:03d}.png",
                (SIZE, SIZE),
                offset + index,
                caption=f"photo {offset + index}",
            )
            dark = (np.asarray(Image.open(gt)).astype(np.float64) * 0.6).round()
            make_photo(root / split / "lq" / f"{index:03d}.png", pixels=dark.astype(np.uint8))
    sources = [(f"dark-{split}", split, "low-light", split) for split in ("train", "val")]
    return build_pairs_dataset(root, "dark", sources, max_count=SHARD_SIZE)


class NoisyInputTask(RestorerTask):
    """Adds noise from the global torch RNG, so resume must restore every rank's RNG too."""

    def loss(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        noisy = batch["lq"] + 0.05 * torch.randn_like(batch["lq"])
        return super().loss(model, {**batch, "lq": noisy})


def _task(seed: int = 0, kind: type[RestorerTask] = NoisyInputTask) -> RestorerTask:
    torch.manual_seed(seed)
    return kind(create_model("nafnet-tiny"))


def _loader(folder: Path | str, **kwargs):
    config = {"batch_size": 4, "crop_size": 16, "num_workers": 0, "seed": 3, **kwargs}
    return train_loader(folder, "train", TYPES, config)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


CONFIG = TrainConfig(
    iterations=9, lr=1e-3, warmup=2, checkpoint_every=4, log_every=2, ema_decay=0.9, device="cpu"
)


# --- exact resume, one process ----------------------------------------------------------------


def test_stopped_and_resumed_run_repeats_the_uninterrupted_losses(dataset, tmp_path):
    # 6 batches per epoch: 9 steps cross an epoch, the stop at 4 is mid-epoch.
    full = train(_task(), _loader(dataset), CONFIG, tmp_path / "full")
    assert full.step == 9 and full.resumed_from == 0
    first = train(_task(), _loader(dataset), CONFIG, tmp_path / "split", stop_after=4)
    assert first.step == 4
    # A fresh process would build the model again from scratch; the checkpoint must win.
    second = train(_task(seed=99), _loader(dataset), CONFIG, tmp_path / "split")
    assert second.resumed_from == 4 and second.step == 9

    assert [r["loss"] for r in first.losses + second.losses] == [r["loss"] for r in full.losses]
    for ours, theirs in ((full.model, second.model), (full.ema_model, second.ema_model)):
        for a, b in zip(ours.state_dict().values(), theirs.state_dict().values(), strict=True):
            assert torch.equal(a, b)
    log_full, log_split = _rows(tmp_path / "full" / "log.csv"), _rows(tmp_path / "split/log.csv")
    assert len(log_split) == 9 and log_split == log_full
    assert [int(r["step"]) for r in log_full] == list(range(1, 10))
    assert [int(r["epoch"]) for r in log_full] == [0] * 6 + [1] * 3
    lrs = [float(r["lr"]) for r in log_full]
    assert lrs[:3] == pytest.approx([5e-4, 1e-3, 1e-3]) and lrs[-1] < lrs[2]
    metrics = json.loads((tmp_path / "split" / "metrics.json").read_text())
    assert metrics["step"] == 9 and metrics["train"]["loss"] == full.losses[-1]["loss"]

    # Rows written after the last checkpoint by a run that then died are cut on resume.
    with (tmp_path / "split" / "log.csv").open("a") as fh:
        fh.write("10,1,0.001,0.5\n")
    again = train(_task(), _loader(dataset), CONFIG, tmp_path / "split")
    assert again.resumed_from == 9 and again.losses == []
    assert len(_rows(tmp_path / "split" / "log.csv")) == 9


def test_lr_schedule_warms_up_then_decays_to_min_lr():
    config = TrainConfig(iterations=10, lr=1.0, min_lr=0.1, warmup=2)
    factors = [lr_factor(config, s) for s in range(11)]
    assert factors[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert factors[-1] == pytest.approx(0.1) and factors == sorted(factors[:2]) + sorted(
        factors[2:], reverse=True
    )
    assert lr_factor(TrainConfig(iterations=5, schedule="constant"), 4) == 1.0
    with pytest.raises(ValueError, match="unknown training keys"):
        TrainConfig.from_dict({"iterations": 1, "epochs": 3})


# --- checkpoint failure modes -----------------------------------------------------------------


def test_corrupt_checkpoint_is_an_error_naming_the_file(dataset, tmp_path):
    config = TrainConfig(iterations=2, device="cpu")
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt"):
        train(_task(), _loader(dataset), config, tmp_path)


def test_checkpoint_of_another_run_restarts_with_a_warning(dataset, tmp_path, caplog):
    train(_task(), _loader(dataset), TrainConfig(iterations=2, device="cpu"), tmp_path)
    other = TrainConfig(iterations=3, lr=5e-4, device="cpu")
    with caplog.at_level(logging.WARNING, logger="uir_models.training.loop"):
        result = train(_task(), _loader(dataset), other, tmp_path)
    assert "starting over" in caplog.text
    assert result.resumed_from == 0 and result.step == 3
    assert len(_rows(tmp_path / "log.csv")) == 3


def _copy_with_new_shard_hash(dataset: Path, to: Path) -> Path:
    """The dataset as if one train shard had been rebuilt with other content (same name)."""
    shutil.copytree(dataset, to)
    manifest = json.loads((to / "manifest.json").read_text())
    shard = next(entry for entry in manifest["shards"] if entry["split"] == "train")
    shard["sha256"] = "0" * 64
    (to / "manifest.json").write_text(json.dumps(manifest))
    return to


@pytest.mark.parametrize(
    "change", ["pixel loss", "psnr floor", "L_clip prompts", "model config", "data"]
)
def test_a_run_starts_over_when_its_loss_model_config_or_data_change(
    dataset, tmp_path, monkeypatch, change
):
    """Each of these leaves the shapes alone, so only the digest can tell the runs apart: a
    resumed (here: finished) checkpoint would otherwise stand in for the changed run."""
    config = TrainConfig(iterations=2, device="cpu")
    out = tmp_path / "run"
    data = _copy_with_new_shard_hash(dataset, tmp_path / "data")

    def run(
        pixel_loss: str = "psnr",
        zero_init: bool = True,
        folder: Path = dataset,
        prompts: str = "prompts-a",
    ):
        model = create_model("nafnet-tiny", {"zero_init_output": zero_init})
        task = RestorerTask(
            model,
            pixel_loss=pixel_loss,
            quality_loss=lambda images: images.mean(),
            quality_weight=0.1,
            quality_source=prompts,
        )
        return train(task, _loader(folder), config, out)

    assert run().resumed_from == 0
    assert run().resumed_from == 2  # unchanged: the finished run is reused
    if change == "pixel loss":
        again = run(pixel_loss="l1")
    elif change == "psnr floor":
        monkeypatch.setattr("uir_models.losses.PSNR_LOSS_FLOOR", 1e-5)
        again = run()
    elif change == "L_clip prompts":
        again = run(prompts="prompts-b")
    elif change == "model config":
        again = run(zero_init=False)
    else:
        again = run(folder=data)
    assert again.resumed_from == 0 and again.step == 2


def test_ema_follows_the_decay_formula():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = ModelEma(model, decay=0.75)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 0.75 * 1 + 0.25 * 3))
    ema.update(model)
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 0.75 * 1.5 + 0.25 * 3))
    assert not ema.module.weight.requires_grad
    with pytest.raises(ValueError, match="decay"):
        ModelEma(model, decay=1.0)


# --- the restorer task --------------------------------------------------------------------------


def test_restorer_beats_the_identity_on_val(dataset, tmp_path):
    config = TrainConfig(
        iterations=60, lr=2e-3, min_lr=1e-4, checkpoint_every=1000, log_every=20, device="cpu"
    )
    val = eval_loader(dataset, "val", TYPES, batch_size=2)
    task = _task(kind=RestorerTask)
    result = train(task, _loader(dataset, crop_size=32), config, tmp_path, eval_loader=val)
    metrics = result.metrics["val"]
    assert metrics["psnr"] > metrics["psnr_identity"] + 1.0, metrics
    assert json.loads((tmp_path / "metrics.json").read_text())["val"] == metrics
    assert len(_rows(tmp_path / "eval.csv")) == 1


# --- two ranks under torchrun -------------------------------------------------------------------


def _rank_main(folder: str, out: str, mode: str) -> None:
    """One rank: ``full`` runs 8 steps into out/full and 3 into out/split; ``resume`` goes on
    with out/split. Each rank records its steps and loss rows."""
    config = TrainConfig(iterations=8, lr=1e-3, checkpoint_every=5, log_every=2, device="cpu")
    runs = {"full": [("full", None), ("split", 3)], "resume": [("split", None)]}[mode]
    rank = os.environ["RANK"]
    for name, stop in runs:
        loader = _loader(folder, seed=11)
        result = train(_task(), loader, config, Path(out, name), stop_after=stop)
        record = {"step": result.step, "resumed_from": result.resumed_from, "rows": result.losses}
        Path(out, f"{name}-{mode}-rank{rank}.json").write_text(json.dumps(record))
    shutdown_distributed()


def _torchrun(cli_env: dict[str, str], *args: str) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", __file__, *args]
    process = subprocess.Popen(
        command,
        env={**cli_env, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # torchrun, both ranks
        output, _ = process.communicate()
        pytest.fail(f"DDP training hung (killed after {DEADLINE_S} s):\n{output[-3000:]}")
    assert process.returncode == 0, output[-3000:]


def test_two_ranks_uneven_shards_train_and_resume_exactly(dataset, tmp_path, cli_env):
    assert len(list(dataset.glob("train-*.tar"))) == 3  # 3 shards for 2 ranks
    _torchrun(cli_env, str(dataset), str(tmp_path), "full")
    _torchrun(cli_env, str(dataset), str(tmp_path), "resume")

    def record(name: str, mode: str, rank: int) -> dict:
        return json.loads((tmp_path / f"{name}-{mode}-rank{rank}.json").read_text())

    full = [record("full", "full", r) for r in range(2)]
    assert full[0]["step"] == full[1]["step"] == 8
    assert full[0]["rows"] == full[1]["rows"]  # losses are averaged over ranks
    stopped, resumed = record("split", "full", 0), record("split", "resume", 0)
    assert stopped["step"] == 3 and resumed["resumed_from"] == 3 and resumed["step"] == 8
    assert record("split", "resume", 1)["step"] == 8
    assert stopped["rows"] + resumed["rows"] == full[0]["rows"]
    for name in ("full", "split"):
        folder = tmp_path / name
        assert {p.name for p in folder.iterdir()} == {"checkpoint.pt", "log.csv", "metrics.json"}
        assert [int(r["step"]) for r in _rows(folder / "log.csv")] == list(range(1, 9))
    assert _rows(tmp_path / "split" / "log.csv") == _rows(tmp_path / "full" / "log.csv")


if __name__ == "__main__":
    _rank_main(*sys.argv[1:])
