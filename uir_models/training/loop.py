"""One training loop for every model: torchrun-ready, AMP on CUDA, EMA, exact resume.

A run lives in ``out_dir`` (a DVC output): ``checkpoint.pt`` (atomic, rank 0 writes it, every
rank reads it), ``log.csv`` (one row per step: the loss terms averaged over ranks, for DVC
plots), ``eval.csv`` (one row per evaluation) and ``metrics.json`` (the final numbers, a DVC
metrics file). Only rank 0 writes files.

Exact resume. The checkpoint holds the model, EMA, optimiser and scheduler states, the step,
every rank's RNG states and the data position: the epoch and the batches already consumed in
it. The training loaders' batches are a deterministic function of (seed, epoch, rank, world
size, workers), so resuming sets the epoch and skips the consumed batches. WebDataset streams
cannot seek: the skipped batches are read, decoded and augmented again, costing up to one
epoch of data loading (no model compute). The config digest covers everything that decides
the result (config, model parameter shapes, loader seeding, world size); a checkpoint with
another digest is not resumed: the run starts over, with a warning. On CPU with
``num_workers=0`` a stopped and resumed run repeats the losses of an uninterrupted one
bit for bit; with workers, per-worker streams are seeded alike, so the batches also match.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from uir_models.config_keys import check_keys
from uir_models.training.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_KIND,
    read_training_checkpoint,
    rng_state,
    seed_everything,
    set_rng_state,
    write_atomic,
)
from uir_models.training.distributed import (
    DistContext,
    all_gather_objects,
    all_reduce_mean,
    barrier,
    init_distributed,
    reduce_weighted_means,
)
from uir_models.training.ema import ModelEma
from uir_models.training.tasks import Batch, TrainTask

log = logging.getLogger(__name__)

LOOP_VERSION = 1
"""Part of the digest: bump when the update rule or the data position logic changes, so an
old checkpoint is not resumed with other semantics."""
CHECKPOINT_NAME = "checkpoint.pt"
_NOT_IN_DIGEST = frozenset({"amp", "checkpoint_every", "log_every", "eval_every", "device"})


@dataclass(frozen=True)
class TrainConfig:
    """How to optimise (AdamW, linear warmup then cosine to ``min_lr``) and how to run."""

    iterations: int
    """Total optimiser steps of the run, across resumes."""
    lr: float = 2e-4
    min_lr: float = 1e-6
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: int = 0
    schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float | None = None
    ema_decay: float | None = None
    """``None``: no EMA; else evaluation uses the averaged weights."""
    amp: bool = False
    """bf16 autocast, on CUDA only (CPU runs ignore it, so tests and GPU runs share configs)."""
    checkpoint_every: int = 500
    log_every: int = 50
    """Steps between writing log rows: each write is one all-reduce, not one per step."""
    eval_every: int | None = None
    """Steps between evaluations; the run also evaluates when it ends."""
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        # Configs come from YAML: normalise numbers so equal configs digest equally.
        for name in ("lr", "min_lr", "weight_decay"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        for name in ("iterations", "checkpoint_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0 or self.seed < 0:
            raise ValueError("warmup and seed must be >= 0")
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1 or None, got {self.eval_every}")
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise ValueError(f"need lr > 0 and 0 <= min_lr <= lr, got {self.lr=}, {self.min_lr=}")
        if len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers, got {self.betas}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        check_keys(cls, values, "training")
        return cls(**values)

    def canonical(self) -> dict[str, Any]:
        """The fields that decide the trained weights (not how fast or how often we write)."""
        values = dataclasses.asdict(self)
        values["betas"] = list(self.betas)
        return {k: v for k, v in values.items() if k not in _NOT_IN_DIGEST}


def lr_factor(config: TrainConfig, step: int) -> float:
    """Multiplier of ``lr`` for the step after ``step`` steps: linear warmup, then cosine (or
    constant) down to ``min_lr`` at ``iterations``."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    if config.schedule == "constant":
        return 1.0
    progress = min((step - config.warmup) / max(config.iterations - config.warmup, 1), 1.0)
    floor = config.min_lr / config.lr
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class EpochLoader(Protocol):
    """A fixed number of batches per epoch, chosen by ``set_epoch`` (``TrainLoader``)."""

    def set_epoch(self, epoch: int) -> None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Batch]: ...


@dataclass
class TrainResult:
    model: nn.Module
    """The trained model itself (not the DDP wrapper), in eval mode."""
    ema_model: nn.Module | None
    step: int
    resumed_from: int
    losses: list[dict[str, float]]
    """Rows of the steps run in this call, as in ``log.csv`` (means over ranks)."""
    metrics: dict[str, Any]
    """What ``metrics.json`` holds: step, epoch, last training losses, last evaluation."""
    steps_per_second: float


def run_digest(config: TrainConfig, task: TrainTask, loader: EpochLoader, world_size: int) -> str:
    """sha256 of what decides the run's results; a checkpoint is resumed only if it matches."""
    seeding = getattr(loader, "seeding", {"batches_per_epoch": len(loader)})
    model = task.model
    model_config = getattr(model, "config", None)
    payload = {
        "loop_version": LOOP_VERSION,
        "config": config.canonical(),
        "task": {"kind": type(task).__qualname__, **task.objective()},
        "model": type(model).__qualname__,
        "model_config": dataclasses.asdict(model_config)
        if dataclasses.is_dataclass(model_config) and not isinstance(model_config, type)
        else None,
        "shapes": {name: list(t.shape) for name, t in model.state_dict().items()},
        "data": {k: v for k, v in seeding.items() if k not in ("next_epoch", "rank")},
        "world_size": world_size,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class CsvLog:
    """Rows appended to a CSV by rank 0 only; on resume, rows past the checkpoint's step are
    cut (they were written after it, by a run that then died), so the file matches the state."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def start(self, step: int) -> None:
        if not self.enabled or not self.path.exists():
            return
        if step == 0:
            self.path.unlink()
            return
        with self.path.open(newline="") as fh:
            rows = list(csv.reader(fh))
        kept = [rows[0], *(row for row in rows[1:] if row and int(row[0]) <= step)]
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(kept)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(text.getvalue())
        os.replace(tmp, self.path)

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        rows = list(rows)
        if not self.enabled or not rows:
            return
        new = not self.path.exists()
        with self.path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
            if new:
                writer.writeheader()
            writer.writerows(rows)


def _to_device(batch: Batch, device: torch.device) -> dict[str, Any]:
    cuda = device.type == "cuda"
    return {
        k: v.to(device, non_blocking=cuda) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


def _batch_len(batch: Mapping[str, Any]) -> int:
    return next(len(v) for v in batch.values() if isinstance(v, torch.Tensor | list))


def evaluate(
    task: TrainTask, model: nn.Module, loader: Iterable[Batch], ctx: DistContext, amp: bool
) -> dict[str, float]:
    """Means over every sample of ``loader`` across ranks, weighted by sample counts.

    Runs under a forked RNG, so evaluating (or not) never changes the training that follows:
    a resumed run may evaluate at other steps and still repeat the uninterrupted one.
    """
    sums: dict[str, float] = {}
    count = 0
    was_training = model.training
    model.eval()
    devices = [ctx.device] if ctx.device.type == "cuda" else []
    with (
        torch.random.fork_rng(devices=devices),
        torch.no_grad(),
        torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=amp),
    ):
        for batch in loader:
            batch = _to_device(batch, ctx.device)
            n = _batch_len(batch)
            for name, value in task.evaluate(model, batch).items():
                sums[name] = sums.get(name, 0.0) + float(value) * n
            count += n
    model.train(was_training)
    return reduce_weighted_means(sums, count)


def _epoch_batches(loader: EpochLoader, epoch: int, seed: int) -> Iterator[Batch]:
    """The batches of ``epoch``, fetched under a torch RNG of their own seeded from (seed,
    epoch). A DataLoader draws its workers' base seed from the global RNG when it starts (and
    main-process transforms may draw too), which would otherwise make the training RNG depend
    on where a run resumed. Replaying skipped batches replays this RNG as well."""
    loader.set_epoch(epoch)
    data_rng = torch.Generator().manual_seed(seed * 1_000_003 + epoch).get_state()
    batches = iter(loader)
    while True:
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(data_rng)
            batch = next(batches, None)
            data_rng = torch.get_rng_state()
        if batch is None:
            return
        yield batch


def _resumable(path: Path, digest: str) -> dict[str, Any] | None:
    if not path.exists():
        return None
    state = read_training_checkpoint(path)
    if state["digest"] != digest:
        log.warning(
            "checkpoint %s was made by another run (digest %s, now %s): starting over",
            path,
            state["digest"][:12],
            digest[:12],
        )
        return None
    return state


def train(
    task: TrainTask,
    train_loader: EpochLoader,
    config: TrainConfig,
    out_dir: str | Path,
    eval_loader: Iterable[Batch] | None = None,
    *,
    stop_after: int | None = None,
) -> TrainResult:
    """Train ``task.model`` for ``config.iterations`` steps, resuming ``out_dir`` if it holds a
    checkpoint of the same run.

    Under torchrun (``WORLD_SIZE > 1``) the process group is joined (see ``init_distributed``)
    and the model wrapped in DDP; the loaders must be built for this rank (``train_loader``
    reads torchrun's environment). Every rank must call this with the same arguments.
    ``stop_after`` caps the steps run by this call (a checkpoint is written when it stops).
    """
    if stop_after is not None and stop_after < 0:
        raise ValueError(f"stop_after must be >= 0, got {stop_after}")
    if len(train_loader) < 1:
        raise ValueError("the training loader has no batches per epoch")
    if eval_loader is not None and not hasattr(task, "evaluate"):
        raise TypeError(f"{type(task).__name__} has no evaluate(); pass no eval_loader")
    ctx = init_distributed(config.device)
    out_dir = Path(out_dir)
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = out_dir / CHECKPOINT_NAME
    model = task.model.to(ctx.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, config))
    digest = run_digest(config, task, train_loader, ctx.world_size)

    step = epoch = consumed = 0
    last_row: dict[str, float] = {}
    state = _resumable(checkpoint, digest)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, consumed = int(state["step"]), int(state["epoch"]), int(state["consumed"])
        last_row = dict(state.get("last_row", {}))
        set_rng_state(state["rng"][ctx.rank], ctx.device)
    else:
        seed_everything(config.seed, ctx.rank)
    barrier()  # every rank has read the checkpoint before rank 0 may overwrite it
    # DDP broadcasts rank 0's weights; the EMA copy is taken after, so it matches on all ranks.
    wrapped: nn.Module = model
    if ctx.world_size > 1:
        device_ids = [ctx.device] if ctx.device.type == "cuda" else None
        wrapped = DistributedDataParallel(model, device_ids=device_ids)
    ema = ModelEma(model, config.ema_decay) if config.ema_decay is not None else None
    if ema is not None and state is not None:
        ema.load_state_dict(state["ema"])

    logs = CsvLog(out_dir / "log.csv", ctx.is_main)
    evals = CsvLog(out_dir / "eval.csv", ctx.is_main)
    logs.start(step)
    evals.start(step)
    resumed_from = step
    end = config.iterations if stop_after is None else min(config.iterations, step + stop_after)
    use_amp = config.amp and ctx.device.type == "cuda"
    # Losses stay on the device until a log write: reading each would sync CPU and GPU.
    pending: list[tuple[int, int, float, dict[str, torch.Tensor]]] = []
    rows: list[dict[str, float]] = []
    val: dict[str, float] = {}
    evaluated_at = -1

    def flush() -> None:
        nonlocal last_row
        if not pending:
            return
        names = list(pending[0][3])
        values = torch.stack([torch.stack([p[3][n] for n in names]) for p in pending]).float()
        values = all_reduce_mean(values).tolist()
        new = [
            {"step": s, "epoch": e, "lr": lr, **dict(zip(names, v, strict=True))}
            for (s, e, lr, _), v in zip(pending, values, strict=True)
        ]
        pending.clear()
        logs.append(new)
        rows.extend(new)
        last_row = {k: v for k, v in new[-1].items() if k not in ("step", "epoch")}
        if ctx.is_main:
            log.info("step %d/%d %s", new[-1]["step"], config.iterations, last_row)

    def run_eval() -> None:
        nonlocal val, evaluated_at
        if eval_loader is None or evaluated_at == step:
            return
        module = ema.module if ema is not None else model
        val = evaluate(task, module, eval_loader, ctx, use_amp)
        evaluated_at = step
        evals.append([{"step": step, **val}])
        if ctx.is_main:
            log.info("step %d eval %s", step, val)

    def save() -> None:
        flush()
        rngs = all_gather_objects(rng_state(ctx.device))
        if ctx.is_main:
            write_atomic(
                {
                    "format": CHECKPOINT_FORMAT,
                    "kind": CHECKPOINT_KIND,
                    "digest": digest,
                    "config": config.canonical(),
                    "model": model.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "step": step,
                    "epoch": epoch,
                    "consumed": consumed,
                    "last_row": last_row,
                    "rng": rngs,
                },
                checkpoint,
            )

    wrapped.train()
    start = time.perf_counter()
    while step < end:
        seen = 0
        for index, batch in enumerate(_epoch_batches(train_loader, epoch, config.seed)):
            seen = index + 1
            if index < consumed:
                continue  # resuming mid-epoch: this batch was trained on before the stop
            batch = _to_device(batch, ctx.device)
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=use_amp):
                parts = task.loss(wrapped, batch)
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            if ema is not None:
                ema.update(model)
            pending.append((step + 1, epoch, lr, {k: v.detach() for k, v in parts.items()}))
            step, consumed = step + 1, index + 1
            if consumed == len(train_loader):
                epoch, consumed = epoch + 1, 0
            if step % config.log_every == 0:
                flush()
            if config.eval_every is not None and step % config.eval_every == 0:
                run_eval()
            if step % config.checkpoint_every == 0 and step < end:
                save()
            if step >= end:
                break
        else:
            if seen < len(train_loader):
                raise RuntimeError(
                    f"the training loader yielded {seen} batches in epoch {epoch}, "
                    f"not its length {len(train_loader)}"
                )
    flush()
    elapsed = time.perf_counter() - start
    ran = step - resumed_from
    if ran:
        save()
    run_eval()
    metrics: dict[str, Any] = {"step": step, "epoch": epoch, "train": last_row}
    if val:
        metrics["val"] = val
    if ctx.is_main:
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    barrier()
    model.eval()
    return TrainResult(
        model=model,
        ema_model=ema.module if ema is not None else None,
        step=step,
        resumed_from=resumed_from,
        losses=rows,
        metrics=metrics,
        steps_per_second=ran / elapsed if ran and elapsed > 0 else 0.0,
    )
