"""The ``build-dataset`` Prefect flow: thin orchestration of `uir.dataset.build`.

One task per ingest batch and per chunk (never per image), on the task runner the dataset's
``runner`` config names; progress and a summary table are published as artifacts. The build
itself is resumable on its own (chunk stats files), so a retried or re-run flow only does
what is missing.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from uir.dataset import build
from uir.dataset.chunks import ChunkResult, write_chunk
from uir.dataset.config import RunnerConfig, load_dataset_config
from uir.dataset.manifest import finalize
from uir.dataset.sources import discover

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


def _progress_key(name: str) -> str:
    return "build-" + "".join(c if c.isalnum() else "-" for c in name.lower())


@flow(name=FLOW_NAME, log_prints=True)
def build_dataset(
    dataset: str = "demo",
    params: str = "params.yaml",
    overrides: dict[str, Any] | None = None,
    dvc_commit: bool = False,
) -> dict[str, Any]:
    """Build ``datasets.<dataset>`` of ``params``; ``dvc_commit`` records the outputs in
    dvc.lock afterwards (for runs outside `dvc repro`, such as deployments)."""
    config = load_dataset_config(dataset, params, overrides)
    runner = make_task_runner(config.runner)
    with _workers_share_api():
        manifest = _build_on_runner.with_options(task_runner=runner)(config)
    if dvc_commit and config.dvc_stage:
        record_in_dvc(config.root, config.dvc_stage)
    return manifest


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


def record_in_dvc(root: str, stage: str) -> None:
    """`dvc commit` the stage so a build made outside `dvc repro` is versioned the same way."""
    completed = subprocess.run(
        [sys.executable, "-m", "dvc", "commit", "--force", stage],
        cwd=root, capture_output=True, text=True, check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"dvc commit {stage} failed: {completed.stderr.strip()}")
