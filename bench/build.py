"""Benchmark the local dataset build (``run_build``) against pure synthesis of the same plan.

Run: ``python bench/build.py [--quick] [--json OUT] [--profile]``.

Why pure synthesis as the yardstick: degrading pixels is the work a dataset build exists to do;
everything else (discovery, ingest decode, captions from the cache, cropping, PNG encoding, tar
writing, SHA-256/MD5 hashing, fsync, finalize) is overhead that may cost at most a third of it,
so end-to-end pairs/s >= 0.75x synthesis pairs/s. Both figures come from the SAME plan: it is
taken from the library (discover -> ingest -> select -> caption -> plan_samples/make_chunks, the
steps ``run_build`` runs), then each SampleSpec's already decoded and cropped HQ goes through
``degradations.synthesize_sample`` alone, in one thread, and only that call is timed.

End-to-end builds call ``run_build`` as it is, on a fresh output folder each time, with 1 worker
(inline in this process) and with 2 worker processes (the pool is created inside the timed
call, so process start counts; ``run_build`` forks its workers unless torch is loaded).
Nothing is excluded.

Config: the ``demo`` entry of params.yaml with these overrides, and why:
- ``synthesis.variants`` 64 (``--quick``: 32) and ``shards.max_count`` 16: the demo has 7
  photographs; with its own 8 variants a 1-worker build takes under a second, and its 4
  chunks cannot balance over 2 workers. 64 variants give 448 pairs in 28 chunks.
- ``shards.png_compression`` 0 (``--png-compression``): stored PNGs, the codec setting that fits
  the budget: deflate (libdeflate level 1) costs ~2.5 ms/pair more, a third of synthesis by
  itself, for 45% smaller shards. The full run also times a 1-worker build at level 1.
- ``captions.source: blip`` with a private cache warmed before timing (the demo's sidecar texts
  stored under the BLIP captioner id): captions come from the cache as in any re-run, and no
  BLIP weights are needed, so the benchmark runs offline.
- ``output`` and the caption cache in a temporary folder, so the repository is not touched.

Threads: one per process (OpenCV, OpenMP, BLAS), set through the environment before anything
loads, so workers inherit it: the targets are per-process throughput and scaling by
processes, and with default threading a 1-worker build would already use both cores of a small
machine while a 2-worker build would oversubscribe them.

Noise: every figure is the best of ``--repeats`` interleaved runs, each started once the machine
looks idle (``--idle-wait``). CPU seconds (this process and its reaped workers) are shown next
to wall seconds, and so are the cores other processes used meanwhile ("others"): a speed-up
measured while others ran is not a property of the build.

Context row (full run only, not a target): pure synthesis split over 2 already started
processes (what this machine gives two processes of this workload: the speed-up's ceiling).

Memory: builds (2 workers) of N copies of the demo photos and of 4N copies (flipped/rotated, so
every copy has other pixels and survives de-duplication), each in a fresh process, reporting max
RSS of the parent (RUSAGE_SELF) and of the largest worker (RUSAGE_CHILDREN). Streaming means the
4N figure stays flat.
"""

from __future__ import annotations

import os

# Before numpy / OpenCV load: one thread per process, inherited by the workers.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "OPENCV_FOR_THREADS_NUM"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from multiprocessing import get_context  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

cv2.setNumThreads(1)

from degradations import synthesize_sample  # noqa: E402
from uir.dataset import build  # noqa: E402
from uir.dataset.captions import BlipCaptioner, CaptionCache  # noqa: E402
from uir.dataset.chunks import write_chunk  # noqa: E402
from uir.dataset.config import DatasetConfig, load_dataset_config  # noqa: E402
from uir.dataset.plan import Chunk, SampleSpec  # noqa: E402
from uir.demo import demo_images  # noqa: E402
from uir.imageio import CAPTION_SUFFIX, DEPTH_SUFFIX, load_rgb, read_depth, sidecar  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PARAMS = ROOT / "params.yaml"
DATASET = "demo"

TARGET_RATIO = 0.75  # e2e(1 worker) / synthesis
TARGET_SPEEDUP = 1.7  # e2e(2 workers) / e2e(1 worker)
MEMORY_GROWTH_LIMIT = 1.25  # peak RSS at 4N / at N: flat, with room for allocator noise
IDLE_CORES = 0.25  # "idle": other processes use less than this many cores

FULL = {"variants": 64, "max_count": 16, "repeats": 3, "memory_variants": 4, "idle_wait": 30}
QUICK = {"variants": 32, "max_count": 16, "repeats": 1, "memory_variants": 2, "idle_wait": 10}
COPY_TRANSFORMS: tuple[tuple[str, Callable[[np.ndarray], np.ndarray]], ...] = (
    ("id", lambda a: a),
    ("hflip", lambda a: a[:, ::-1]),
    ("vflip", lambda a: a[::-1]),
    ("rot180", lambda a: a[::-1, ::-1]),
)


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class Setup:
    workdir: Path
    variants: int
    max_count: int
    png_compression: int

    def config(self, output: str, sources: list[dict[str, Any]] | None = None,
               png_compression: int | None = None) -> DatasetConfig:
        """The demo dataset with the overrides documented above."""
        level = self.png_compression if png_compression is None else png_compression
        overrides: dict[str, Any] = {
            "output": str(self.workdir / output),
            "captions": {"source": "blip", "cache": str(self.workdir / "captions.sqlite")},
            "synthesis": {"variants": self.variants},
            "shards": {"max_count": self.max_count, "png_compression": level},
            "runner": {"kind": "process"},
        }
        if sources is not None:
            overrides["sources"] = sources
        return load_dataset_config(DATASET, PARAMS, overrides)


def warm_captions(config: DatasetConfig) -> int:
    """Store a caption for every HQ under the BLIP id, as a BLIP run would have left them.

    The text is the demo sidecar of the photo (or of the photo a copy was made from), so no
    weights are loaded; the build then finds every caption in the cache.
    """
    candidates, pairing_rejects = build.discover(config)
    selection = build.select(config, pairing_rejects, build.ingest_batch(candidates, config))
    settings = config.captions
    captioner = BlipCaptioner(settings.model, max_new_tokens=settings.max_new_tokens)
    originals = {photo.stem: photo for photo in demo_images()}
    texts = {}
    for item, _ in selection.assigned:
        photo = originals.get(item.candidate.path.stem.split("__")[0])
        caption = sidecar(photo, CAPTION_SUFFIX) if photo else None
        texts[item.hq_hash] = caption.read_text().strip() if caption else "a photograph"
    with CaptionCache(config.resolve_path(settings.cache)) as cache:
        cache.put_many(texts, captioner.id)
    return len(texts)


def make_plan(config: DatasetConfig) -> list[Chunk]:
    """The chunks ``run_build`` would write, from the library's own steps (inline)."""
    candidates, pairing_rejects = build.discover(config)
    selection = build.select(config, pairing_rejects, build.ingest_batch(candidates, config))
    captions = build.caption(config, selection)
    return build.plan(config, selection, captions)


# --------------------------------------------------------------------------- machine load


def _cpu_seconds() -> float:
    """CPU of this process and of its reaped children (a pool's workers once it shut down)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _machine_busy_seconds() -> float:
    """CPU seconds all processes have used since boot (/proc/stat), 0 where there is none."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass
class Timing:
    """Wall and CPU seconds of one measured call, and the cores others used meanwhile."""

    wall: float = 0.0
    cpu: float = 0.0
    others: float = 0.0


@contextmanager
def measured() -> Iterator[Timing]:
    """Fills a Timing for the ``with`` body: wall, own CPU, and other processes' cores."""
    timing = Timing()
    wall, cpu, busy = time.perf_counter(), _cpu_seconds(), _machine_busy_seconds()
    try:
        yield timing
    finally:
        timing.wall = time.perf_counter() - wall
        timing.cpu = _cpu_seconds() - cpu
        foreign = _machine_busy_seconds() - busy - timing.cpu
        timing.others = max(0.0, foreign / timing.wall) if timing.wall else 0.0


def wait_for_idle(limit_s: float) -> float:
    """Wait (up to ``limit_s``) until other processes use < IDLE_CORES cores; seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < limit_s:
        before = _machine_busy_seconds()
        time.sleep(0.5)
        if (_machine_busy_seconds() - before) / 0.5 < IDLE_CORES:
            break
    return time.perf_counter() - start


# --------------------------------------------------------------------------- measurements


def synthesis_pass(chunks: list[Chunk]) -> tuple[float, float, int]:
    """Wall and CPU seconds inside ``synthesize_sample`` for every spec, and the spec count.

    Decoding and cropping happen untimed; side inputs (the motorcycle's depth map) are prepared
    as ``SampleMaker`` does: resized to the full HQ, then cropped with it.
    """
    wall = cpu = 0.0
    count = 0
    path, full, depth = None, np.zeros((0, 0, 3), np.uint8), None
    for chunk in chunks:
        for spec in chunk.samples:
            if spec.is_real:
                raise SystemExit("the benchmark config must hold synthetic samples only")
            if spec.hq_path != path:
                path = spec.hq_path
                full = load_rgb(spec.hq_path, max_pixels=chunk.settings.max_pixels)
                depth = read_depth(spec.depth_path) if spec.depth_path else None
                if depth is not None and depth.shape[:2] != full.shape[:2]:
                    depth = cv2.resize(depth, (full.shape[1], full.shape[0]),
                                       interpolation=cv2.INTER_LINEAR)
            hq = _crop(full, spec.crop)
            inputs = {} if depth is None else {"depth": _crop(depth, spec.crop)}
            seconds, cpu_seconds = _synthesize_one(hq, spec, inputs)
            wall += seconds
            cpu += cpu_seconds
            count += 1
    return wall, cpu, count


def _crop(image: np.ndarray, box: tuple[int, int, int, int] | None) -> np.ndarray:
    if box is None:
        return image
    top, left, height, width = box
    return np.ascontiguousarray(image[top : top + height, left : left + width])


def _synthesize_one(hq: np.ndarray, spec: SampleSpec,
                    inputs: dict[str, np.ndarray]) -> tuple[float, float]:
    start, start_cpu = time.perf_counter(), time.process_time()
    synthesize_sample(hq, spec.preset, spec.seed, inputs=inputs, **spec.overrides)
    return time.perf_counter() - start, time.process_time() - start_cpu


@dataclass
class Run:
    """One measured run: what, how long, how many pairs, and how big the shards came out."""

    label: str
    timing: Timing
    pairs: int
    shard_bytes: int = 0
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.timing.wall


def timed_build(setup: Setup, workers: int, name: str, png_compression: int | None = None,
                ) -> Run:
    """One whole ``run_build`` on a fresh output folder (config loading included)."""
    with measured() as timing:
        config = setup.config(f"out-{name}", png_compression=png_compression)
        report = build.run_build(config, workers=workers)
    shards = report.manifest["shards"]
    return Run(f"{workers}w", timing, sum(s["samples"] for s in shards),
               sum(s["bytes"] for s in shards),
               {stage: round(value, 2) for stage, value in report.seconds.items()})


def _synthesis_in_worker(chunks: list[Chunk]) -> tuple[float, float, int]:
    return synthesis_pass(chunks)


def synthesis_two_processes(chunks: list[Chunk], pool: ProcessPoolExecutor) -> Timing:
    """Pure synthesis of the plan split over 2 started processes (alternate chunks), timed the
    same way: the slower process's seconds inside ``synthesize_sample``. What this machine can
    give two processes of this workload, the ceiling for the build's speed-up."""
    with measured() as outer:
        halves = list(pool.map(_synthesis_in_worker, [chunks[0::2], chunks[1::2]]))
    workers_cpu = sum(h[1] for h in halves)  # the live workers' CPU is not in RUSAGE_CHILDREN
    others = max(0.0, outer.others - workers_cpu / outer.wall)
    return Timing(max(h[0] for h in halves), workers_cpu, others)


# --------------------------------------------------------------------------- memory


def write_copies(folder: Path, copies: int) -> int:
    """``copies`` transformed copies of each demo photo (and its depth sidecar) as PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1]
    for photo in demo_images():
        image = cv2.imread(str(photo), cv2.IMREAD_UNCHANGED)
        depth_path = sidecar(photo, DEPTH_SUFFIX)
        depth = cv2.imread(str(depth_path), cv2.IMREAD_UNCHANGED) if depth_path else None
        for name, transform in COPY_TRANSFORMS[:copies]:
            stem = f"{photo.stem}__{name}"
            cv2.imwrite(str(folder / f"{stem}.png"), np.ascontiguousarray(transform(image)),
                        params)
            if depth is not None:
                cv2.imwrite(str(folder / f"{stem}{DEPTH_SUFFIX}"),
                            np.ascontiguousarray(transform(depth)), params)
            written += 1
    return written


def memory_child(spec: str) -> None:
    """In a fresh process: one 2-worker build, then its own and its workers' peak RSS."""
    args = json.loads(spec)
    setup = Setup(Path(args["workdir"]), args["variants"], args["max_count"],
                  args["png_compression"])
    config = setup.config("out", [{"kind": "hq", "name": "copies", "paths": [args["folder"]]}])
    warm_captions(config)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = build.run_build(config, workers=2)
    print(json.dumps({
        "pairs": sum(s["samples"] for s in report.manifest["shards"]),
        "parent_before_build_mb": before / 1024,
        "parent_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }))


def measure_memory(setup: Setup, variants: int) -> list[dict[str, Any]]:
    """Peak RSS for N and 4N images, each build in its own process (ru_maxrss never drops)."""
    results = []
    for copies in (1, 4):
        folder = setup.workdir / f"copies-{copies}"
        images = write_copies(folder, copies)
        spec = json.dumps({"workdir": str(setup.workdir / f"mem-{copies}"),
                           "folder": str(folder), "variants": variants,
                           "max_count": setup.max_count,
                           "png_compression": setup.png_compression})
        done = subprocess.run([sys.executable, __file__, "--memory-child", spec],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"memory build failed:\n{done.stderr[-3000:]}")
        results.append({"images": images, **json.loads(done.stdout.strip().splitlines()[-1])})
    return results


# --------------------------------------------------------------------------- profile


def profile_chunk(chunks: list[Chunk], workdir: Path, top: int = 25) -> str:
    """cProfile of one chunk's ``write_chunk`` (caches warmed on another chunk first)."""
    folder = workdir / "profile"
    folder.mkdir()
    write_chunk(chunks[-1], folder)
    profiler = cProfile.Profile()
    profiler.enable()
    write_chunk(chunks[0], folder)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


# --------------------------------------------------------------------------- report


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="32 variants, one repeat, no level-1 row (the speed-up needs the "
                        "full size: the workers' start is a larger share of a short build)")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--variants", type=int, help="override variants per photo")
    parser.add_argument("--repeats", type=int, help="override the interleaved repeats")
    parser.add_argument("--png-compression", type=int, default=0,
                        help="shards.png_compression for the measured builds (default 0)")
    parser.add_argument("--idle-wait", type=float,
                        help="seconds to wait for an idle machine before each run")
    parser.add_argument("--profile", action="store_true",
                        help="also print a cProfile of one chunk's write_chunk")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def print_runs(pairs: int, rows: list[tuple[str, list[Run]]]) -> None:
    header = (f"{'measure':<32}{'wall s':>8}{'pairs/s':>9}{'ms/pair':>9}{'cpu ms/pair':>12}"
              f"{'others':>8}   every run (wall s)")
    print(header)
    print("-" * len(header))
    for label, runs in rows:
        best = min(runs, key=lambda r: r.timing.wall)
        t = best.timing
        every = ", ".join(f"{r.timing.wall:.2f}" for r in runs)
        print(f"{label:<32}{t.wall:>8.2f}{pairs / t.wall:>9.1f}{1e3 * t.wall / pairs:>9.2f}"
              f"{1e3 * t.cpu / pairs:>12.2f}{t.others:>8.2f}   {every}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child)
        return
    size = dict(QUICK if args.quick else FULL)
    repeats = args.repeats or size["repeats"]
    idle_wait = size["idle_wait"] if args.idle_wait is None else args.idle_wait
    with tempfile.TemporaryDirectory(prefix="uir-bench-build-") as tmp:
        setup = Setup(Path(tmp), args.variants or size["variants"], size["max_count"],
                      args.png_compression)
        config = setup.config("plan")
        warm_captions(config)
        chunks = make_plan(config)
        pairs = sum(len(chunk.samples) for chunk in chunks)
        print(f"dataset: {DATASET} ({PARAMS.name}), {setup.variants} variants x "
              f"{pairs // setup.variants} photos = {pairs} pairs in {len(chunks)} chunks of <= "
              f"{setup.max_count}; crop {config.synthesis.crop.mode} "
              f"{config.synthesis.crop.size}; PNG level {setup.png_compression}")
        print(f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}; one thread per "
              f"process; OpenCV {cv2.__version__}, numpy {np.__version__}; best of {repeats}")
        build.run_build(setup.config("warmup"), workers=1)  # imports, file cache, git lookup
        extras = not args.quick
        runs: dict[str, list[Run]] = {key: [] for key in ("synth", "1w", "2w", "synth2")}
        waited = 0.0
        with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
            if extras:  # start both processes and warm their caches, untimed
                list(pool.map(_synthesis_in_worker, [chunks[:1], chunks[1:2]]))
            for run in range(repeats):
                waited += wait_for_idle(idle_wait)
                with measured() as outer:
                    wall, cpu, count = synthesis_pass(chunks)
                assert count == pairs
                runs["synth"].append(Run("synth", Timing(wall, cpu, outer.others), pairs))
                for workers in (1, 2):
                    waited += wait_for_idle(idle_wait)
                    runs[f"{workers}w"].append(timed_build(setup, workers, f"{workers}w-{run}"))
                if extras:
                    waited += wait_for_idle(idle_wait)
                    runs["synth2"].append(Run("synth2", synthesis_two_processes(chunks, pool),
                                              pairs))
        for key in ("1w", "2w"):
            assert all(r.pairs == pairs for r in runs[key]), [r.pairs for r in runs[key]]
        level1 = None
        if extras and setup.png_compression != 1:
            waited += wait_for_idle(idle_wait)
            level1 = timed_build(setup, 1, "1w-level1", png_compression=1)

        best = {key: min(r, key=lambda run: run.timing.wall) for key, r in runs.items() if r}
        synth_rate = best["synth"].pairs_per_s
        ratio = best["1w"].pairs_per_s / synth_rate
        speedup = best["2w"].pairs_per_s / best["1w"].pairs_per_s
        ceiling = best["synth2"].pairs_per_s / synth_rate if "synth2" in best else None
        print()
        rows = [("pure synthesis (1 thread)", runs["synth"]),
                ("run_build, 1 worker", runs["1w"]), ("run_build, 2 workers", runs["2w"])]
        if level1:
            rows.append(("run_build, 1 worker, PNG level 1", [level1]))
        if ceiling:
            rows.append(("pure synthesis, 2 processes", runs["synth2"]))
        print_runs(pairs, rows)
        print(f"(cpu: this process plus its workers; others: cores other processes used "
              f"meanwhile; waited {waited:.0f} s in all for an idle machine)")
        for key in ("1w", "2w"):
            print(f"  stages of the best {key[0]}-worker build (s): {best[key].stages}")
        kib = {f"level {setup.png_compression}": best["1w"].shard_bytes / pairs / 1024}
        if level1:
            kib["level 1"] = level1.shard_bytes / pairs / 1024
        print("  shard bytes per pair: " + ", ".join(f"{k} {v:.0f} KiB" for k, v in kib.items()))
        synth_ms = 1e3 / synth_rate
        overhead_ms = 1e3 / best["1w"].pairs_per_s - synth_ms
        print()
        print(f"e2e(1 worker) / synthesis = {ratio:.2f} (target >= {TARGET_RATIO}): "
              f"{_verdict(ratio >= TARGET_RATIO)}   (overhead {overhead_ms:.2f} ms/pair = "
              f"{100 * overhead_ms / synth_ms:.0f}% of synthesis; budget 33%)")
        print(f"e2e(2 workers) / e2e(1 worker) = {speedup:.2f}x (target >= {TARGET_SPEEDUP}): "
              f"{_verdict(speedup >= TARGET_SPEEDUP)}")
        if ceiling:
            print(f"  machine ceiling: pure synthesis on 2 processes = {ceiling:.2f}x one")
        others = max(best[key].timing.others for key in ("1w", "2w"))
        if others > IDLE_CORES:
            print(f"  note: other processes used up to {others:.2f} cores during the best "
                  "runs; the speed-up is understated")

        memory = measure_memory(setup, size["memory_variants"])
        peak = [max(m["parent_mb"], m["worker_mb"]) for m in memory]
        growth = peak[1] / peak[0]
        print()
        print(f"peak memory, 2 workers, {size['memory_variants']} variants per image "
              "(max RSS of the parent and of the largest worker)")
        for m in memory:
            print(f"  {m['images']:>4} images {m['pairs']:>5} pairs: parent "
                  f"{m['parent_mb']:6.1f} MB (before the build {m['parent_before_build_mb']:.1f})"
                  f", worker {m['worker_mb']:6.1f} MB")
        print(f"  4N/N peak = {growth:.2f} (streaming: <= {MEMORY_GROWTH_LIMIT}): "
              f"{_verdict(growth <= MEMORY_GROWTH_LIMIT)}")

        if args.profile:
            print()
            print(f"cProfile of write_chunk({chunks[0].split}-{chunks[0].index}, "
                  f"{len(chunks[0].samples)} samples), by own time")
            print(profile_chunk(chunks, setup.workdir))
        if args.json:
            report = {
                "dataset": DATASET, "variants": setup.variants, "max_count": setup.max_count,
                "png_compression": setup.png_compression, "pairs": pairs,
                "chunks": len(chunks), "repeats": repeats, "cpus": os.cpu_count(),
                "runs": {key: [asdict(r) for r in r_list] for key, r_list in runs.items()},
                "build_level1": asdict(level1) if level1 else None,
                "pairs_per_s": {key: r.pairs_per_s for key, r in best.items()},
                "synthesis_pairs_per_s": synth_rate,
                "e2e_pairs_per_s": {"1": best["1w"].pairs_per_s, "2": best["2w"].pairs_per_s},
                "ratio": ratio, "ratio_target": TARGET_RATIO,
                "ratio_target_met": ratio >= TARGET_RATIO,
                "speedup": speedup, "speedup_target": TARGET_SPEEDUP,
                "speedup_target_met": speedup >= TARGET_SPEEDUP,
                "synthesis_two_process_ceiling": ceiling,
                "memory": memory, "memory_growth": growth,
                "memory_growth_limit": MEMORY_GROWTH_LIMIT,
                "memory_target_met": growth <= MEMORY_GROWTH_LIMIT,
            }
            args.json.write_text(json.dumps(report, indent=1) + "\n")
            print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
