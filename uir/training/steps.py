"""The training steps, as every torchrun process runs them: controller, embeddings, restorers.

Each step is a thin composition of ``uir_models`` pieces (factory, shard loaders, tasks, the
loop) with the paths of a ``TrainingJob``; the loop itself resumes a run from its checkpoint,
so calling a step again after an interruption continues it, and after completion is a no-op.
Random weights (a tiny random CLIP in tests) are drawn from the run's recorded seed, so every
rank and every later step rebuilds the same model before loading the trained state.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from uir.dataset.atomic import write_json_atomic
from uir.dataset.schema import MANIFEST
from uir.training.config import ControllerSection, RestorerSection
from uir.training.job import EMBEDDINGS_STAMP, TrainingError, TrainingJob
from uir_models.checkpoints import write_atomic
from uir_models.data import EmbeddingTable, eval_loader, split_shards, train_loader
from uir_models.data.shards import DatasetError
from uir_models.devices import resolve_device
from uir_models.factory import create_model
from uir_models.training import TrainConfig, train
from uir_models.training.checkpoint import read_training_checkpoint
from uir_models.training.distributed import init_distributed
from uir_models.training.loop import CHECKPOINT_NAME
from uir_models.training.tasks import (
    ConditionedRestorerTask,
    ControllerTask,
    RestorerTask,
    SdeRestorerTask,
)

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def _train_config(job: TrainingJob, values: dict[str, Any]) -> TrainConfig:
    return TrainConfig.from_dict({"device": job.training.selected.device, **values})


def build_seeded(name: str, overrides: dict[str, Any], seed: int) -> nn.Module:
    """The same initial weights on every rank and in every later step (frozen random CLIPs)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(name, overrides)


def build_controller(job: TrainingJob) -> nn.Module:
    section: ControllerSection = job.training.selected.controller
    seed = _train_config(job, section.train).seed
    return build_seeded(section.model, section.model_overrides, seed)


def load_trained(model: nn.Module, run_dir: Path, what: str) -> dict[str, Any]:
    """Put a finished run's weights (its EMA when it kept one) into ``model``."""
    path = run_dir / CHECKPOINT_NAME
    if not path.exists():
        raise TrainingError(f"no {what} checkpoint at {path}: run `uir train {what}` first")
    state = read_training_checkpoint(path)
    model.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
    model.eval()
    return state


def _monitor_loader(
    job: TrainingJob,
    types: tuple[str, ...],
    crop: int | None,
    embeddings: EmbeddingTable | None = None,
) -> Any:
    """Held-out batches the loop evaluates now and then (centre crops of the training size)."""
    evaluate = job.training.selected.evaluate
    try:
        return eval_loader(
            job.shards_dir,
            evaluate.split,
            types,
            batch_size=8,
            crop_size=crop,
            embeddings=embeddings,
        )
    except DatasetError as err:
        log.warning("no evaluation during training: %s", err)
        return None


def train_controller(job: TrainingJob, *, stop_after: int | None = None) -> dict[str, Any]:
    section = job.training.selected.controller
    model = build_controller(job)
    types = tuple(model.degradation_types)
    loader = train_loader(job.shards_dir, section.split, types, section.data)
    monitor = _monitor_loader(job, types, loader.seeding.get("crop_size"))
    result = train(
        ControllerTask(model),
        loader,
        _train_config(job, section.train),
        job.controller_dir,
        monitor,
        stop_after=stop_after,
    )
    return {"step": result.step, "resumed_from": result.resumed_from, **result.metrics}


def _manifest_digest(job: TrainingJob) -> str:
    path = job.shards_dir / MANIFEST
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as err:
        raise TrainingError(f"{path}: cannot read the dataset manifest ({err})") from None


@torch.no_grad()
def compute_embeddings(job: TrainingJob) -> dict[str, Any]:
    """DA-CLIP (degradation, content) embeddings of every sample's LQ, from the trained
    controller, saved once for all restorers; redone only when the controller or the dataset
    changed (a stamp beside the table records both)."""
    model = build_controller(job)
    state = load_trained(model, job.controller_dir, "controller")
    digest = hashlib.sha256(
        json.dumps([state["digest"], int(state["step"]), _manifest_digest(job)]).encode()
    ).hexdigest()
    stamp_path = job.restorers_dir / EMBEDDINGS_STAMP
    try:
        stamp = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        stamp = {}
    if stamp.get("digest") == digest and job.embeddings.exists():
        return {**stamp, "skipped": True}
    device = resolve_device(job.training.selected.device)
    model.to(device)
    types = tuple(model.degradation_types)
    batch_size = job.training.selected.embed_batch
    keys: list[str] = []
    degra: list[torch.Tensor] = []
    content: list[torch.Tensor] = []
    pending: list[torch.Tensor] = []

    def flush() -> None:
        if pending:
            c, d = model.encode_image(torch.cat(pending), preprocess=False)
            content.append(c.float().cpu())
            degra.append(d.float().cpu())
            pending.clear()

    for split in SPLITS:
        try:
            split_shards(job.shards_dir, split)
        except DatasetError:
            continue  # an empty split
        # Full images one by one (sizes differ), batched after CLIP's resize + centre crop.
        for batch in eval_loader(job.shards_dir, split, types, rank=0, world_size=1):
            pending.append(model.preprocess(batch["lq"].to(device)))
            keys.extend(batch["key"])
            if len(pending) == batch_size:
                flush()
    flush()
    if not keys:
        raise TrainingError(f"{job.shards_dir}: no samples to embed")
    table = EmbeddingTable(tuple(keys), torch.cat(degra), torch.cat(content), str(job.embeddings))
    job.restorers_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(table.state(), job.embeddings)  # a killed run leaves no half-written table
    stamp = {"digest": digest, "samples": len(keys), "controller_step": int(state["step"])}
    write_json_atomic(stamp_path, stamp)
    return {**stamp, "skipped": False}


def dataset_types(job: TrainingJob, split: str) -> tuple[str, ...]:
    """The degradation labels a split holds, in a fixed order (for type-balanced batches)."""
    return tuple(sorted(split_shards(job.shards_dir, split).label_counts))


def _clip_loss(
    job: TrainingJob, section: RestorerSection, device: torch.device
) -> tuple[Any, str | None]:
    """Perceive-IR's L_clip from the prompts a quality job learned (frozen), and the digest
    of those prompts (relearned prompts are another objective)."""
    if section.clip_loss is None:
        return None, None
    from uir.quality.job import QualityError, load_job, read_stamp
    from uir.quality.perceive import STAMP, trained_perceiver

    quality = load_job(section.clip_loss.quality, job.params)
    if quality is None:
        raise TrainingError(
            f"clip_loss names quality.{section.clip_loss.quality}, which params.yaml lacks"
        )
    try:
        perceiver = trained_perceiver(quality).to(device)
    except QualityError as err:
        raise TrainingError(f"clip_loss: {err}") from None
    perceiver.requires_grad_(False)
    stamp = read_stamp(quality.perceiver_dir / STAMP) or {}
    return perceiver.clip_quality_loss, stamp.get("digest")


def build_restorer(job: TrainingJob, name: str) -> tuple[nn.Module, RestorerSection]:
    restorers = job.training.selected.restorers
    if name not in restorers:
        raise TrainingError(f"no restorer {name!r} in profile {job.profile}: {sorted(restorers)}")
    section = restorers[name]
    seed = _train_config(job, section.train).seed
    return build_seeded(section.model, {}, seed), section


def is_conditioned(model: nn.Module) -> bool:
    """Restorers that take DA-CLIP embeddings (all but the plain NAFNet)."""
    from uir_models.archs.nafnet import NAFNet

    return not isinstance(model, NAFNet)


def restorer_task(
    job: TrainingJob, section: RestorerSection, model: nn.Module, device: torch.device
) -> Any:
    if section.method == "sde":
        from uir_models.sde import IRSDE, SdeConfig

        return SdeRestorerTask(
            model, IRSDE(SdeConfig.from_dict(section.sde)), eval_steps=section.eval_steps
        )
    cls = ConditionedRestorerTask if is_conditioned(model) else RestorerTask
    weight = section.clip_loss.weight if section.clip_loss else 0.0
    quality_loss, prompts = _clip_loss(job, section, device)
    return cls(
        model,
        pixel_loss=section.pixel_loss,
        quality_loss=quality_loss,
        quality_weight=weight,
        quality_source=prompts,
    )


def train_restorer(job: TrainingJob, name: str, *, stop_after: int | None = None) -> dict[str, Any]:
    model, section = build_restorer(job, name)
    conditioned = is_conditioned(model)
    if conditioned and not job.embeddings.exists():
        raise TrainingError(f"{job.embeddings} is missing: run `uir train restorer` (it embeds)")
    embeddings = EmbeddingTable.load(job.embeddings) if conditioned else None
    if embeddings is not None and embeddings.degra.shape[1] != model.config.context_dim:
        raise TrainingError(
            f"restorer {name} ({section.model}) takes {model.config.context_dim}-d embeddings, "
            f"the controller gives {embeddings.degra.shape[1]}-d: set its context_dim to match"
        )
    config = _train_config(job, section.train)
    ctx = init_distributed(config.device)
    task = restorer_task(job, section, model, ctx.device)
    types = dataset_types(job, section.split)
    loader = train_loader(job.shards_dir, section.split, types, section.data, embeddings=embeddings)
    monitor = _monitor_loader(job, types, loader.seeding.get("crop_size"), embeddings)
    result = train(task, loader, config, job.restorer_dir(name), monitor, stop_after=stop_after)
    return {"step": result.step, "resumed_from": result.resumed_from, **result.metrics}
