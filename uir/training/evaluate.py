"""The ``evaluate`` step: held-out scores of the trained controller and restorers, as DVC
metrics and plots and the tables a Prefect artifact shows.

Written to ``reports/train/`` (the ``reports`` of the profile):
- ``metrics.json``: controller top-1 (overall, per class, chance), each restorer's means and
  its gain over the identity (the LQ itself), the profile and steps that made them;
- ``controller_confusion.csv`` (DVC confusion template), ``controller_classes.csv``;
- ``restorer_<name>_types.csv`` (per degradation type) and ``restorer_<name>_samples.csv``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from uir.dataset.atomic import write_json_atomic
from uir.training.job import TrainingJob
from uir.training.steps import (
    build_controller,
    build_restorer,
    dataset_types,
    is_conditioned,
    load_trained,
    restorer_task,
)
from uir_models.data import eval_loader
from uir_models.devices import resolve_device
from uir_models.evaluation import (
    ClassificationScores,
    RestorationScores,
    keyed_rows,
    markdown_table,
    write_confusion_csv,
    write_table_csv,
)
from uir_models.metrics import MetricUnavailableError, load_lpips

log = logging.getLogger(__name__)

RESTORER_COLUMNS = ("count", "psnr", "psnr_identity", "gain", "ssim", "psnr_y", "ssim_y")


@torch.no_grad()
def evaluate_controller(job: TrainingJob, device: torch.device) -> dict[str, Any]:
    model = build_controller(job)
    state = load_trained(model, job.controller_dir, "controller")
    model.to(device)
    classes = tuple(model.degradation_types)
    scores = ClassificationScores(classes)
    split = job.training.selected.evaluate.split
    for batch in eval_loader(job.shards_dir, split, classes, rank=0, world_size=1):
        probs = model.classify(batch["lq"].to(device)).float().cpu()
        scores.add(probs, batch["types"], batch["key"])
    reports = job.reports_dir
    write_confusion_csv(reports / "controller_confusion.csv", scores)
    summary = scores.summary()
    write_table_csv(reports / "controller_classes.csv", keyed_rows(summary["per_class"], "class"))
    return {"step": int(state["step"]), **summary}


def _lpips(job: TrainingJob, device: torch.device) -> tuple[Any, str | None]:
    settings = job.training.selected.evaluate
    if not settings.lpips:
        return None, "LPIPS skipped: evaluate.lpips is false"
    try:
        return load_lpips(settings.lpips_net).to(device), None
    except MetricUnavailableError as err:
        log.warning("%s", err)
        return None, str(err)


@torch.no_grad()
def evaluate_restorer(
    job: TrainingJob, name: str, device: torch.device, lpips: Any
) -> dict[str, Any]:
    settings = job.training.selected.evaluate
    model, section = build_restorer(job, name)
    state = load_trained(model, job.restorer_dir(name), "restorer")
    model.to(device)
    task = restorer_task(job, section, model, device)
    embeddings = job.embeddings if is_conditioned(model) else None
    scores = RestorationScores(settings.crop_border, lpips)
    loader = eval_loader(
        job.shards_dir,
        settings.split,
        dataset_types(job, settings.split),
        batch_size=settings.batch_size,
        crop_size=settings.crop_size,
        embeddings=embeddings,
        rank=0,
        world_size=1,
    )
    # SDE sampling draws noise: fork the RNG so the scores are a function of the seed alone.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(settings.seed)
        for batch in loader:
            batch = {
                k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
            }
            pred = task.restore(model, batch).float().clamp(0, 1)
            scores.add(pred, batch["lq"], batch["hq"], batch["types"], batch["key"])
    reports = job.reports_dir
    summary = scores.summary()
    write_table_csv(reports / f"restorer_{name}_types.csv", keyed_rows(summary["per_type"], "type"))
    write_table_csv(reports / f"restorer_{name}_samples.csv", scores.rows())
    return {"step": int(state["step"]), "model": section.model, **summary}


def evaluate(job: TrainingJob) -> dict[str, Any]:
    """Score every trained model of the profile; returns what ``metrics.json`` holds."""
    device = resolve_device(job.training.selected.device)
    lpips, lpips_skip = _lpips(job, device)
    metrics: dict[str, Any] = {
        "profile": job.profile,
        "dataset": job.training.selected.dataset,
        "split": job.training.selected.evaluate.split,
        "controller": evaluate_controller(job, device),
        "restorers": {
            name: evaluate_restorer(job, name, device, lpips)
            for name in job.training.selected.restorers
        },
    }
    if lpips_skip:
        metrics["lpips_skipped"] = lpips_skip
    metrics["controller"].pop("confusion", None)  # in controller_confusion.csv
    write_json_atomic(job.reports_dir / "metrics.json", metrics)
    return metrics


def report_markdown(metrics: dict[str, Any]) -> str:
    """The evaluation as markdown: controller per-class top-1 and restorer gains per type."""
    controller = metrics["controller"]
    lines = [
        f"# Evaluation of profile `{metrics['profile']}` on {metrics['dataset']} "
        f"({metrics['split']})",
        "",
        f"Controller (step {controller['step']}): top-1 {controller['top1']:.3f} over "
        f"{controller['count']} samples (95% CI {controller['ci95_low']:.3f}-"
        f"{controller['ci95_high']:.3f}); chance {controller['chance']:.3f}. A class whose "
        "p-value against chance is above 0.05 is not shown to beat guessing.",
        "",
        markdown_table(
            keyed_rows(controller["per_class"], "class"),
            ("class", "support", "top1", "ci95_low", "ci95_high", "p_above_chance"),
        ),
    ]
    for name, scores in metrics["restorers"].items():
        lines += [
            "",
            f"## Restorer `{name}` ({scores['model']}, step {scores['step']})",
            "",
            f"PSNR {scores['psnr']:.2f} dB vs identity {scores['psnr_identity']:.2f} dB "
            f"(gain {scores['gain']:+.2f}); SSIM {scores['ssim']:.4f}.",
            "",
            markdown_table(keyed_rows(scores["per_type"], "type"), ("type", *RESTORER_COLUMNS)),
        ]
    if "lpips_skipped" in metrics:
        lines += ["", metrics["lpips_skipped"]]
    return "\n".join(lines) + "\n"
