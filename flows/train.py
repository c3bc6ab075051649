"""Prefect flows ``train-controller`` and ``train-restorer``: thin orchestration of
`uir.training`, run after ``build-dataset`` for the dataset the training profile reads.

Each training task launches torchrun (one process per GPU of the profile, gloo on CPUs), so the
Prefect worker never holds a process group or a CUDA context itself; the loop resumes from its
checkpoint, so a retried task continues where the failed one stopped. ``train-restorer`` ends
with the evaluation, published as artifacts (markdown report and per-class/per-type tables).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.dvc import record_in_dvc
from uir.training.config import DVC_STAGES
from uir.training.evaluate import RESTORER_COLUMNS, report_markdown
from uir.training.launch import launch
from uir_models.evaluation import keyed_rows

_TASK = {"cache_policy": NO_CACHE, "retry_delay_seconds": 5}


@task(name="torchrun", **_TASK)
def torchrun_task(
    step: str, params: str, profile: str | None, overrides: dict[str, Any] | None
) -> dict[str, Any]:
    return launch(step, params, profile=profile, overrides=overrides, torchrun=True)


@task(name="evaluate", **_TASK)
def evaluate_task(params: str, profile: str | None, overrides: dict[str, Any] | None) -> Any:
    return launch("evaluate", params, profile=profile, overrides=overrides)["evaluate"]


def _artifact_key(profile: str, what: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in f"train-{profile}-{what}".lower())


def _commit(params: str, steps: list[str]) -> None:
    record_in_dvc(str(Path(params).resolve().parent), [DVC_STAGES[step] for step in steps])


@flow(name="train-controller", log_prints=True)
def train_controller(
    params: str = "params.yaml",
    profile: str | None = None,
    overrides: dict[str, Any] | None = None,
    dvc_commit: bool = False,
    retries: int = 0,
) -> dict[str, Any]:
    """Train the DA-CLIP controller of the profile (``training.profile`` when None)."""
    result = torchrun_task.with_options(retries=retries)("controller", params, profile, overrides)
    controller = result["controller"]
    get_run_logger().info(
        "controller: step %s, val %s", controller["step"], controller.get("val", {})
    )
    if dvc_commit:
        _commit(params, ["controller"])
    return result


@flow(name="train-restorer", log_prints=True)
def train_restorer(
    params: str = "params.yaml",
    profile: str | None = None,
    overrides: dict[str, Any] | None = None,
    dvc_commit: bool = False,
    retries: int = 0,
) -> dict[str, Any]:
    """Embed the dataset with the trained controller, train every restorer of the profile,
    then evaluate everything on the held-out split."""
    result = torchrun_task.with_options(retries=retries)("restorer", params, profile, overrides)
    metrics = evaluate_task(params, profile, overrides)
    _evaluation_artifacts(metrics)
    if dvc_commit:
        _commit(params, ["restorer", "evaluate"])
    return {**result, "evaluate": metrics}


def _evaluation_artifacts(metrics: dict[str, Any]) -> None:
    profile = metrics["profile"]
    controller = metrics["controller"]
    create_markdown_artifact(
        markdown=report_markdown(metrics),
        key=_artifact_key(profile, "evaluation"),
        description=f"{profile}: controller top-1 {controller['top1']:.3f} "
        f"(chance {controller['chance']:.3f})",
    )
    create_table_artifact(
        table=keyed_rows(controller["per_class"], "class"),
        key=_artifact_key(profile, "controller-classes"),
        description=f"{profile}: controller top-1 per degradation class ({metrics['split']})",
    )
    for name, scores in metrics["restorers"].items():
        rows = [
            {"type": row["type"], **{c: row.get(c) for c in RESTORER_COLUMNS}}
            for row in keyed_rows(scores["per_type"], "type")
        ]
        create_table_artifact(
            table=rows,
            key=_artifact_key(profile, f"restorer-{name}"),
            description=f"{profile}: {name} PSNR {scores['psnr']:.2f} dB, identity "
            f"{scores['psnr_identity']:.2f} dB, per type",
        )
