"""The ``build-dataset`` Prefect flow: thin orchestration of `uir.dataset.build` and, when
params.yaml has a ``quality.<name>`` entry, of the Perceive-IR labelling in `uir.quality`.

One task per ingest batch, per chunk, per proxy fold and per shard (never per image), on the
task runner the dataset's ``runner`` config names; progress, a summary table and the quality
report are published as artifacts. Every step is resumable on its own (chunk stats files,
step stamps, training checkpoints), so a retried or re-run flow only does what is missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from flows.dvc import record_in_dvc
from uir.dataset import build
from uir.dataset.chunks import ChunkResult, write_chunk
from uir.dataset.config import RunnerConfig, load_dataset_config, load_params
from uir.dataset.manifest import finalize
from uir.dataset.sources import discover
from uir.quality import folds, label, perceive, render
from uir.quality.job import QualityJob, dvc_stage, load_job, split_overrides
from uir.quality.run import limit_threads, resolve_steps

FLOW_NAME = "build-dataset"


def make_task_runner(runner: RunnerConfig) -> TaskRunner[Any]:
    """Local pools need nothing; Dask and Ray need their Prefect integration packages."""
    if runner.kind == "process":
        return ProcessPoolTaskRunner(max_workers=runner.workers)
    if runner.kind in ("thread", "sequential"):
        workers = 1 if runner.kind == "sequential" else runner.workers
        return ThreadPoolTaskRunner(max_workers=workers)
    try:
        if runner.kind == "dask":
            from prefect_dask import DaskTaskRunner  # type: ignore[import-not-found]

            if runner.address:
                return DaskTaskRunner(address=runner.address)
            return DaskTaskRunner(cluster_kwargs={"n_workers": runner.workers})
        from prefect_ray import RayTaskRunner  # type: ignore[import-not-found]

        return RayTaskRunner(address=runner.address) if runner.address else RayTaskRunner()
    except ImportError as err:
        package = f"prefect-{runner.kind}"
        raise ImportError(
            f"runner.kind {runner.kind!r} needs the {package} package: pip install {package}"
        ) from err


_TASK = {"cache_policy": NO_CACHE, "retry_delay_seconds": 2}


@task(name="ingest-batch", **_TASK)
def ingest_task(batch: list[Any], config: Any) -> list[Any]:
    return build.ingest_batch(batch, config)


@task(name="write-chunk", **_TASK)
def write_chunk_task(chunk: Any, output: Path) -> ChunkResult:
    return write_chunk(chunk, output)


@task(name="captions", **_TASK)
def caption_task(config: Any, selection: build.Selection) -> tuple[dict[str, Any], Any]:
    captions = build.caption(config, selection)
    return captions, selection


@task(name="proxy-fold", **_TASK)
def proxy_fold_task(job: QualityJob, fold: int, workers: int) -> dict[str, Any]:
    limit_threads(workers)
    return folds.train_fold(job, fold)


@task(name="render-shard", **_TASK)
def render_task(job: QualityJob, shard: str, workers: int) -> dict[str, Any]:
    limit_threads(workers)
    return render.render_shard(job, shard)


@task(name="perceiver", **_TASK)
def perceiver_task(job: QualityJob) -> dict[str, Any]:
    limit_threads(1)
    return perceive.train_prompts(job)


@task(name="score-shard", **_TASK)
def score_task(job: QualityJob, shard: str, workers: int) -> dict[str, Any]:
    limit_threads(workers)
    return perceive.score_shard(job, shard)


@task(name="label-shard", **_TASK)
def label_task(job: QualityJob, shard: str) -> dict[str, Any]:
    return label.label_shard(job, shard)


def _progress_key(name: str) -> str:
    return "build-" + "".join(c if c.isalnum() else "-" for c in name.lower())


@flow(name=FLOW_NAME, log_prints=True)
def build_dataset(
    dataset: str = "demo",
    params: str = "params.yaml",
    overrides: dict[str, Any] | None = None,
    dvc_commit: bool = False,
    steps: list[str] | None = None,
    train: bool | None = None,
) -> dict[str, Any]:
    """Build ``datasets.<dataset>`` of ``params`` and label it when ``quality.<dataset>``
    exists; ``steps`` picks a part (base, proxy, render, perceiver, label), ``dvc_commit``
    records the outputs in dvc.lock afterwards (for runs outside `dvc repro`, such as
    deployments). ``train`` runs the ``train-controller`` and ``train-restorer`` flows
    afterwards (None: when the selected training profile reads this dataset). Returns the
    base and the labelled manifests (None for steps not run) and the training results."""
    dataset_overrides, quality_overrides = split_overrides(overrides)
    config = load_dataset_config(dataset, params, dataset_overrides)
    job = load_job(dataset, params, dataset_overrides, quality_overrides)
    chosen = resolve_steps(steps, job is not None)
    runner = make_task_runner(config.runner)
    base = labelled = None
    with _workers_share_api():
        if "base" in chosen:
            base = _build_on_runner.with_options(task_runner=runner)(config)
        if job is not None and set(chosen) - {"base"}:
            labelled = _label_on_runner.with_options(task_runner=runner)(job, chosen)
    if dvc_commit and config.dvc_stage:
        stages = [config.dvc_stage] if "base" in chosen else []
        if job is not None:
            stages += [s for step in chosen if step != "base" and (s := dvc_stage(job, step))]
        record_in_dvc(config.root, stages)
    trained = None
    if train if train is not None else trains_on(dataset, params):
        from flows.train import train_controller, train_restorer

        trained = {
            **train_controller(params=params, dvc_commit=dvc_commit),
            **train_restorer(params=params, dvc_commit=dvc_commit),
        }
    return {
        "dataset": dataset, "steps": chosen, "base": base, "quality": labelled,
        "training": trained,
    }


def trains_on(dataset: str, params: str | Path) -> bool:
    """Whether params.yaml's selected training profile reads ``dataset``."""
    entry = load_params(Path(params)).get("training")
    if not isinstance(entry, dict):
        return False
    profile = (entry.get("profiles") or {}).get(entry.get("profile")) or {}
    return profile.get("dataset") == dataset


@contextmanager
def _workers_share_api() -> Iterator[None]:
    """Point worker processes at this process's temporary API server.

    Without PREFECT_API_URL (`uir build`), Prefect runs the flow against a temporary server
    that only this process knows about, so each process-pool worker would start one more of
    its own (10-20 s each on two cores). The pool copies the current settings into its
    workers, so exporting the running server's URL makes them share this one.
    """
    if PREFECT_API_URL.value():
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer  # heavy: only when needed

    server = SubprocessASGIServer()  # the per-process singleton that Prefect's client started
    server.start()  # a no-op when it runs already (it does, inside a flow run)
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield


@flow(name=f"{FLOW_NAME}-run")
def _build_on_runner(config: Any) -> dict[str, Any]:
    logger = get_run_logger()
    retries = config.runner.retries
    candidates, pairing_rejects = discover(config)
    batches = build.ingest_batches(candidates)
    ingest = ingest_task.with_options(retries=retries)
    futures = [ingest.submit(batch, config) for batch in batches]
    results = [result for future in futures for result in future.result()]
    selection = build.select(config, pairing_rejects, results)
    logger.info("ingest: %d seen, %d accepted", selection.seen, len(selection.assigned))

    captions, selection = caption_task.with_options(retries=retries)(config, selection)
    chunks = build.plan(config, selection, captions)
    output = build.prepare_output(config)
    progress = create_progress_artifact(
        progress=0.0, key=_progress_key(config.name),
        description=f"{config.name}: chunks written of {len(chunks)}",
    )
    writer = write_chunk_task.with_options(retries=retries)
    chunk_futures = [writer.submit(chunk, output) for chunk in chunks]
    chunk_results: list[ChunkResult] = []
    for future in as_completed(chunk_futures):
        chunk_results.append(future.result())
        update_progress_artifact(progress, 100.0 * len(chunk_results) / max(len(chunks), 1))
        done = chunk_results[-1]
        logger.info(
            "chunk %s-%05d %s (%d/%d)", done.split, done.index,
            "reused" if done.reused else "written", len(chunk_results), len(chunks),
        )
    if not chunks:
        update_progress_artifact(progress, 100.0)
    manifest = finalize(
        config, chunks, chunk_results, selection.rejects, selection.seen, len(selection.assigned)
    )
    _summary_artifact(config.name, manifest, chunk_results)
    return manifest


@flow(name=f"{FLOW_NAME}-quality")
def _label_on_runner(job: QualityJob, steps: list[str]) -> dict[str, Any] | None:
    logger = get_run_logger()
    retries = job.dataset.runner.retries
    workers = job.dataset.runner.workers
    shards = folds.open_base(job).shards
    if "proxy" in steps:
        trainer = proxy_fold_task.with_options(retries=retries)
        for stamp in [f.result() for f in [trainer.submit(job, k, workers) for k in folds.FOLDS]]:
            logger.info("proxy fold %d: %d pairs, final loss %.4f", stamp["fold"],
                        stamp["pairs"], stamp["final_loss"])
    if "render" in steps:
        renderer = render_task.with_options(retries=retries)
        for future in as_completed([renderer.submit(job, shard, workers) for shard in shards]):
            logger.info("medium images of %s", future.result()["shard"])
    if "perceiver" in steps:
        stamp = perceiver_task.with_options(retries=retries)(job)
        logger.info("perceiver: %d triplets, final loss %.4f", stamp["triplets"],
                    stamp["final_loss"])
    if "label" not in steps:
        return None
    scorer = score_task.with_options(retries=retries)
    for future in as_completed([scorer.submit(job, shard, workers) for shard in shards]):
        future.result()
    labeller = label_task.with_options(retries=retries)
    stamps = [f.result() for f in [labeller.submit(job, shard) for shard in shards]]
    manifest = label.finalize_labels(job, stamps)
    _quality_artifacts(job.dataset.name, manifest)
    return manifest


def _quality_artifacts(name: str, manifest: dict[str, Any]) -> None:
    quality = manifest["quality"]
    create_markdown_artifact(
        markdown=label.quality_card(manifest), key=_progress_key(name) + "-quality",
        description=f"{name}: quality labels, val accuracy {quality['val']['accuracy']}",
    )
    rows = [
        {"type": type_name, "samples": t["samples"], "psnr_lq": t["psnr_lq"],
         "psnr_mq": t["psnr_mq"], "psnr_gain": t["psnr_gain"],
         "val_accuracy": quality["val"]["per_type_accuracy"].get(type_name)}
        for type_name, t in quality["per_type"].items()
    ]
    create_table_artifact(
        table=rows, key=_progress_key(name) + "-quality-types",
        description=f"{name}: per-type quality; dropped {quality['dropped']} samples",
    )


def _summary_artifact(name: str, manifest: dict[str, Any], results: list[ChunkResult]) -> None:
    counts = manifest["counts"]
    rows = [
        {"split": split, "samples": counts["splits"][split],
         "shards": sum(1 for s in manifest["shards"] if s["split"] == split),
         **{label: n for label, n in counts["labels"][split].items()}}
        for split in counts["splits"]
    ]
    reused = sum(result.reused for result in results)
    create_table_artifact(
        table=rows, key=_progress_key(name) + "-summary",
        description=(
            f"{name} {manifest['version']}: {counts['samples']} samples; seen {counts['seen']}, "
            f"accepted {counts['accepted']}, rejected {counts['rejected']}; chunks reused "
            f"{reused} of {len(results)}"
        ),
    )
