"""The build as a sequence of plain functions that any orchestrator can call.

discover -> ingest (batches, parallel) -> select (dedupe, splits, leakage) -> caption ->
plan -> write chunks (parallel) -> finalize. The Prefect flow maps these onto tasks; `run_build`
maps them onto a local executor. Neither adds logic of its own.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import (
    Executor,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    as_completed,
)
from contextlib import nullcontext
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from uir.dataset.captions import Caption, CaptionCache, CaptionRequest, caption_all
from uir.dataset.chunks import ChunkResult, write_chunk
from uir.dataset.config import DatasetConfig
from uir.dataset.ingest import Item, deduplicate, ingest
from uir.dataset.manifest import finalize
from uir.dataset.plan import Chunk, make_chunks, plan_samples
from uir.dataset.provenance import code_fingerprint
from uir.dataset.rejects import Rejection
from uir.dataset.sources import Candidate, discover
from uir.dataset.splits import assign_splits
from uir.imageio import CAPTION_SUFFIX, sidecar

INGEST_BATCH = 32
Progress = Callable[[str, int, int], None]


@dataclass
class Selection:
    """Validated items with their splits, and everything rejected on the way."""

    assigned: list[tuple[Item, str]]
    rejects: list[Rejection]
    seen: int


@dataclass
class BuildReport:
    output: Path
    manifest: dict[str, Any]
    written: int = 0
    reused: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def ingest_batches(candidates: Sequence[Candidate]) -> list[list[Candidate]]:
    return [list(candidates[i : i + INGEST_BATCH]) for i in range(0, len(candidates), INGEST_BATCH)]


def _ingest_indexed(
    indexed: tuple[int, Sequence[Candidate]], config: DatasetConfig
) -> tuple[int, list[Item | Rejection]]:
    return indexed[0], ingest_batch(indexed[1], config)


def min_side(config: DatasetConfig) -> int:
    """Random crops need images at least as large as the crop."""
    crop = config.synthesis.crop
    return max(config.ingest.min_size, crop.size if crop.mode == "random" else 1)


def ingest_batch(candidates: Sequence[Candidate], config: DatasetConfig) -> list[Item | Rejection]:
    return ingest(candidates, config.ingest, min_side(config))


def select(
    config: DatasetConfig,
    pairing_rejects: Sequence[Rejection],
    results: Iterable[Item | Rejection],
) -> Selection:
    items: list[Item] = []
    rejects = list(pairing_rejects)
    for result in results:
        (rejects if isinstance(result, Rejection) else items).append(result)  # type: ignore[arg-type]
    seen = len(items) + len(rejects)
    items, duplicates = deduplicate(items)
    assigned, leaks = assign_splits(items, config.splits)
    return Selection(assigned, [*rejects, *duplicates, *leaks], seen)


def caption(
    config: DatasetConfig, selection: Selection, progress: Progress | None = None
) -> dict[str, Caption]:
    """Captions of the HQ images; with sidecar-only captions a missing sidecar is a rejection."""
    settings = config.captions
    if settings.source == "sidecar":
        kept = []
        for item, split in selection.assigned:
            if sidecar(item.candidate.path, CAPTION_SUFFIX) is None:
                selection.rejects.append(
                    Rejection(
                        item.candidate.source, item.candidate.lq_rel or item.candidate.rel,
                        "caption", f"no caption sidecar {item.candidate.path.stem}{CAPTION_SUFFIX}",
                    )
                )
            else:
                kept.append((item, split))
        selection.assigned = kept
    requests = [CaptionRequest(item.hq_hash, item.candidate.path) for item, _ in selection.assigned]

    def blip() -> Any:
        from uir.dataset.captions import BlipCaptioner

        local = config.resolve_path(settings.model)  # a local copy, relative to params.yaml
        model = str(local) if local.is_dir() else settings.model
        return BlipCaptioner(
            model, device=settings.device, batch_size=settings.batch_size,
            max_new_tokens=settings.max_new_tokens,
        )

    with CaptionCache(config.resolve_path(settings.cache)) as cache:
        return caption_all(
            requests, source=settings.source, cache=cache, captioner_factory=blip,
            progress=(lambda done, total: progress("captions", done, total)) if progress else None,
        )


def plan(
    config: DatasetConfig, selection: Selection, captions: dict[str, Caption]
) -> list[Chunk]:
    samples = plan_samples(selection.assigned, captions, config)
    return make_chunks(samples, config, code_fingerprint())


def prepare_output(config: DatasetConfig) -> Path:
    """Create the output folder; temporaries of a killed run are cleaned per chunk."""
    output = config.output_dir
    output.mkdir(parents=True, exist_ok=True)
    return output


def _executor(config: DatasetConfig, count: int) -> Executor:
    if config.runner.kind == "thread":
        return ThreadPoolExecutor(count)
    # fork saves each worker ~1 s of imports; but torch (BLIP captions) starts threads that do
    # not survive a fork, so once it is loaded the workers are spawned instead.
    safe_to_fork = sys.platform == "linux" and "torch" not in sys.modules
    return ProcessPoolExecutor(count, mp_context=get_context("fork" if safe_to_fork else "spawn"))


def _run_each(
    pool: Executor | None, fn: Callable[..., Any], items: Sequence[Any], *args: Any
) -> Iterator[Any]:
    """Results as they finish (in order when inline, so progress shows as work is done)."""
    if pool is None:
        for item in items:
            yield fn(item, *args)
        return
    futures = [pool.submit(fn, item, *args) for item in items]
    for future in as_completed(futures):
        yield future.result()


def stderr_progress(name: str) -> Progress:
    started = time.perf_counter()

    def report(stage: str, done: int, total: int) -> None:
        elapsed = time.perf_counter() - started
        print(f"[{name}] {stage} {done}/{total} ({elapsed:.1f}s)", file=sys.stderr, flush=True)

    return report


def run_build(
    config: DatasetConfig,
    *,
    workers: int | None = None,
    progress: Progress | None = None,
) -> BuildReport:
    """The whole build on this machine: a process pool (or threads, or inline with 1 worker)."""
    progress = progress or (lambda stage, done, total: None)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    count = workers or config.runner.workers
    inline = count == 1 or config.runner.kind == "sequential"
    with nullcontext(None) if inline else _executor(config, count) as pool:
        candidates, pairing_rejects = discover(config)
        batches = ingest_batches(candidates)
        by_batch: dict[int, list[Item | Rejection]] = {}
        indexed = list(enumerate(batches))
        for index, found in _run_each(pool, _ingest_indexed, indexed, config):
            by_batch[index] = found
            progress("ingest", sum(map(len, by_batch.values())), len(candidates))
        # in candidate order: what is kept as the original of a duplicate must not vary
        results = [result for index in sorted(by_batch) for result in by_batch[index]]
        selection = select(config, pairing_rejects, results)
        seconds["ingest"] = time.perf_counter() - clock
        captions = caption(config, selection, progress)
        seconds["captions"] = time.perf_counter() - clock - sum(seconds.values())
        chunks = plan(config, selection, captions)
        output = prepare_output(config)
        chunk_results: list[ChunkResult] = []
        for result in _run_each(pool, write_chunk, chunks, output):
            chunk_results.append(result)
            progress("shards", len(chunk_results), len(chunks))
        seconds["shards"] = time.perf_counter() - clock - sum(seconds.values())
    manifest = finalize(
        config, chunks, chunk_results, selection.rejects, selection.seen,
        len(selection.assigned),
    )
    seconds["total"] = time.perf_counter() - clock
    reused = sum(result.reused for result in chunk_results)
    return BuildReport(output, manifest, len(chunk_results) - reused, reused, seconds)
