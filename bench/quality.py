"""Benchmark the Perceive-IR proxy restorer: training steps/s and rendering megapixels/s.

Run (CPU, CI-sized model, well under 2 minutes on 2 cores):
    python bench/quality.py [--json OUT]
Paper-sized model on a GPU:
    python bench/quality.py --model nafnet-proxy --device cuda --patch 128 --batch 8
The type-conditioned proxy (the demo's): add ``--model nafnet-typed-tiny --condition types``
(``nafnet-typed-proxy`` at paper size).

Why: the medium tier costs two proxy trainings (one per fold, ~20k iterations each in the
reference) plus one tiled rendering of every LQ image; these two figures give the time a
dataset build spends on it, shown as an estimate for 2 x 20k iterations.

What is measured:
- Training: ``train_proxy`` as the integration calls it, on an in-memory PairSet of random
  256x256 pairs (so shard reading and PNG decoding are NOT included: they are the pair set's
  cost). A first call runs ``--warmup`` steps and checkpoints; a second call resumes and runs
  ``--steps`` more, and its ``steps_per_second`` is reported: the training loop alone (batch
  drawing, host-to-device copy, forward, backward, AdamW, schedule, reading losses every 1%),
  not the model build, checkpoint load or final checkpoint write.
- Batch drawing: ``draw_batch`` alone (random crop + dihedral augmentation of LQ and HQ) in
  milliseconds per batch, without and with ``channel_shuffle`` (the demo's setting; the
  ratio of the two, drawn interleaved in this run). On a GPU the CPU draws the next batch
  while the GPU runs the current step, so training is data-bound only if this exceeds the
  step time.
- Rendering: ``render_medium`` of a 512x768 uint8 image (``--render-size``) in ``--tile`` tiles
  with ``--overlap`` (defaults 512 / 32, the reference), after one warm-up render; best of
  ``--repeats``. Includes the uint8 <-> float conversion and host <-> device copies.
- Peak GPU memory (CUDA only): ``torch.cuda.max_memory_allocated`` over the timed training call
  and over the renders, each reset before.

Noise: CPU figures on a shared machine vary with other load; the table shows the torch thread
count. GPU figures are fp32 unless ``--amp`` (bf16 autocast; slower at batch 8 on an H100).
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uir_models.quality.proxy import (
    ProxyTrainSettings,
    draw_batch,
    render_medium,
    resolve_device,
    train_proxy,
)

REFERENCE_ITERATIONS = 2 * 20_000  # two folds of the reference schedule


class RandomPairs:
    """In-memory (LQ, HQ) pairs of random pixels: content does not change the speed. Each
    carries one of twelve type names, for a type-conditioned proxy."""

    def __init__(self, count: int, size: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.pairs = [
            (
                rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            )
            for _ in range(count)
        ]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.pairs[index]

    def labels(self, index: int) -> tuple[str, ...]:
        return (f"type-{index % 12}",)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def bench_training(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    pairs = RandomPairs(16, max(256, args.patch))
    settings = ProxyTrainSettings(
        model=args.model,
        iterations=args.warmup + args.steps,
        batch_size=args.batch,
        patch_size=args.patch,
        checkpoint_every=args.warmup + args.steps,  # only the writes at the end of each call
        device=str(device),
        amp=args.amp,
        condition=args.condition,
    )
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "proxy.pt"
        warm = train_proxy(pairs, settings, ckpt, stop_after=args.warmup)
        params = sum(p.numel() for p in warm.model.parameters())
        del warm
        _reset_peak(device)
        timed = train_proxy(pairs, settings, ckpt)
        peak = _peak_gib(device)
    assert timed.resumed_from == args.warmup and len(timed.losses) == settings.iterations
    draws: dict[bool, list[float]] = {False: [], True: []}
    for step in range(1, 21):
        for shuffle in (False, True):  # interleaved, so load changes hit both alike
            start = time.perf_counter()
            draw_batch(pairs, args.batch, args.patch, 0, step, channel_shuffle=shuffle)
            draws[shuffle].append(time.perf_counter() - start)
    return {
        "params": params,
        "steps_per_second": timed.steps_per_second,
        "ms_per_step": 1000 / timed.steps_per_second,
        "draw_ms_per_batch": 1000 * float(np.median(draws[False])),
        "draw_shuffle_ms_per_batch": 1000 * float(np.median(draws[True])),
        "train_peak_gib": peak,
        "hours_for_reference": REFERENCE_ITERATIONS / timed.steps_per_second / 3600,
        "model": timed.model,
    }


def bench_rendering(
    args: argparse.Namespace, model: torch.nn.Module, device: torch.device
) -> dict[str, Any]:
    h, w = args.render_size
    image = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
    render = functools.partial(
        render_medium, model, tile=args.tile, overlap=args.overlap, labels=("type-0",)
    )
    render(image)  # warm-up
    _reset_peak(device)
    times = []
    for _ in range(args.repeats):
        _sync(device)
        start = time.perf_counter()
        out = render(image)
        times.append(time.perf_counter() - start)  # render_medium returns host memory: synced
    assert out.shape == image.shape
    best = min(times)
    return {
        "render_seconds": best,
        "megapixels_per_second": h * w / 1e6 / best,
        "render_peak_gib": _peak_gib(device),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="nafnet-tiny", help="factory name or YAML path")
    parser.add_argument("--condition", choices=["none", "types"], default="none",
                        help="types: a type-conditioned model such as nafnet-typed-tiny")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=None, help="steps (CPU 3, CUDA 20)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (CPU 20, CUDA 200)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA (default fp32)")
    parser.add_argument("--render-size", type=int, nargs=2, default=(512, 768), metavar=("H", "W"))
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed renders, best reported")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    args.warmup = args.warmup if args.warmup is not None else (20 if cuda else 3)
    args.steps = args.steps if args.steps is not None else (200 if cuda else 20)

    train = bench_training(args, device)
    model = train.pop("model")
    render = bench_rendering(args, model, device)
    where = torch.cuda.get_device_name(device) if cuda else f"cpu, {torch.get_num_threads()} thr"
    amp = "bf16 autocast" if cuda and args.amp else "fp32"
    h, w = args.render_size
    rows = [
        ("model", f"{args.model} ({train['params'] / 1e6:.2f} M params)"),
        ("device", f"{where}; training {amp}, rendering fp32"),
        (
            f"training (batch {args.batch}, patch {args.patch})",
            f"{train['steps_per_second']:.2f} steps/s ({train['ms_per_step']:.1f} ms/step)",
        ),
        ("batch drawing (CPU)", f"{train['draw_ms_per_batch']:.2f} ms/batch"),
        (
            "batch drawing, channel_shuffle",
            f"{train['draw_shuffle_ms_per_batch']:.2f} ms/batch "
            f"(x{train['draw_shuffle_ms_per_batch'] / train['draw_ms_per_batch']:.2f})",
        ),
        ("est. 2 folds x 20k iterations", f"{train['hours_for_reference']:.2f} h"),
        (
            f"rendering {h}x{w} (tile {args.tile}, overlap {args.overlap})",
            f"{render['megapixels_per_second']:.3f} MP/s ({render['render_seconds']:.3f} s)",
        ),
    ]
    if cuda:
        rows.append(
            (
                "peak GPU memory",
                f"training {train['train_peak_gib']:.2f} GiB, "
                f"rendering {render['render_peak_gib']:.2f} GiB",
            )
        )
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if args.json:
        figures = {
            "model": args.model,
            "device": where,
            "amp": bool(cuda and args.amp),
            "batch": args.batch,
            "patch": args.patch,
            "warmup_steps": args.warmup,
            "timed_steps": args.steps,
            "render_size": [h, w],
            "tile": args.tile,
            "overlap": args.overlap,
            "torch": torch.__version__,
            **train,
            **render,
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
