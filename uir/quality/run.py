"""The quality steps on this machine (the `--engine local` route; the flow maps the same
functions onto Prefect tasks): proxy folds, render shards, perceiver, score + label shards."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from contextlib import nullcontext
from multiprocessing import get_context
from typing import Any

from uir.quality.config import STEPS
from uir.quality.folds import FOLDS, open_base, train_fold
from uir.quality.job import QualityError, QualityJob
from uir.quality.label import finalize_labels, label_shard
from uir.quality.perceive import score_shard, train_prompts
from uir.quality.render import render_shard

ALL_STEPS = ("base", *STEPS)
Progress = Callable[[str, int, int], None]


def resolve_steps(requested: Sequence[str] | None, has_quality: bool) -> list[str]:
    """The steps to run, in pipeline order; quality steps need a ``quality:`` entry."""
    if not requested:
        return list(ALL_STEPS if has_quality else ("base",))
    unknown = sorted(set(requested) - set(ALL_STEPS))
    if unknown:
        raise QualityError(f"unknown steps {unknown}; steps are {', '.join(ALL_STEPS)}")
    if not has_quality and set(requested) & set(STEPS):
        raise QualityError("quality steps need a quality.<dataset> entry in params.yaml")
    return [step for step in ALL_STEPS if step in requested]


def limit_threads(workers: int) -> None:
    """Share the cores between worker processes instead of oversubscribing them."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, workers)))


def _pool(workers: int) -> Executor:
    # torch threads do not survive fork: workers are spawned
    return ProcessPoolExecutor(
        workers, mp_context=get_context("spawn"), initializer=limit_threads, initargs=(workers,)
    )


def _each(
    pool: Executor | None, fn: Callable[..., Any], items: Sequence[Any], *args: Any
) -> Iterator[Any]:
    if pool is None:
        for item in items:
            yield fn(*args, item)
        return
    futures = [pool.submit(fn, *args, item) for item in items]
    for future in as_completed(futures):
        yield future.result()


def run_quality(
    job: QualityJob, steps: Sequence[str], *, workers: int = 1, progress: Progress | None = None
) -> dict[str, Any] | None:
    """Run the requested quality steps; returns the labelled manifest when ``label`` ran."""
    report = progress or (lambda step, done, total: None)
    shards = open_base(job).shards
    manifest = None
    with nullcontext(None) if workers <= 1 else _pool(workers) as pool:
        if pool is None:
            limit_threads(1)
        if "proxy" in steps:
            for done, _ in enumerate(_each(pool, train_fold, FOLDS, job), 1):
                report("proxy", done, len(FOLDS))
        if "render" in steps:
            for done, _ in enumerate(_each(pool, render_shard, shards, job), 1):
                report("render", done, len(shards))
        if "perceiver" in steps:
            train_prompts(job)
            report("perceiver", 1, 1)
        if "label" in steps:
            for done, _ in enumerate(_each(pool, score_shard, shards, job), 1):
                report("score", done, len(shards))
            stamps = []
            for stamp in _each(pool, label_shard, shards, job):
                stamps.append(stamp)
                report("label", len(stamps), len(shards))
            manifest = finalize_labels(job, stamps)
    return manifest
