"""Benchmark downstream training: data-loader samples/s (shards vs loose PNGs) and step samples/s.

Run (CPU; defaults ~20 s on 2 cores, ``--quick`` ~15 s):
    python bench/train.py [--quick] [--json OUT]
Paper-sized models and peak GPU memory on a GPU:
    python bench/train.py --device cuda [--json OUT]

What is measured:
- Data loading, shards: ``train_loader`` on ``--shards`` (default ``data/shards/demo``, built
  first with ``uir build demo --steps base --engine local`` when missing), split ``train``,
  ``LoaderConfig(batch_size, crop_size, num_workers)``, every other setting default (shuffle
  buffer, flips, LQ upsampled to the crop). One epoch of ``--warmup-batches`` + ``--batches``
  batches is iterated; the clock starts after the warm-up batches (so worker start-up and the
  first shard opens are excluded) and stops at the last batch.
- Data loading, loose PNGs: the same split exported to the reference's DA-CLIP layout
  (``export_daclip_csv``, i.e. ``uir export daclip-csv``: ``train/lq/<key>.png``,
  ``train/gt/<key>.png`` and a tab-separated ``daclip_train.csv`` of ``filepath``/``title``) in a
  temporary folder. A plain map-style torch ``Dataset`` reads a CSV row, reads the LQ and GT
  files and runs the SAME ``SampleDecoder`` as the shard loader (imagecodecs PNG decode, paired
  random crop, flips, bicubic LQ upsampling, labels from the title); a ``DataLoader`` with the
  same batch size and workers and a ``RandomSampler`` long enough for all batches, so its
  workers also start once. Timed the same way. The export drops multi-label samples (the
  reference's CSV holds one degradation per image), so the PNG set is a subset of the shard
  split: the figure is per sample, and the table shows both sample counts.
- Training steps: ``create_model`` + AdamW over the trainable parameters; per step forward,
  loss, backward and optimizer step on random tensors already on the device (no data loading).
  Restorers: ``RestorerTask.loss`` (NAFNet, L1) on (batch, 3, crop, crop); NAFNet + DA-CLIP
  (``ConditionedRestorerTask``, L1) and the IR-SDE U-Net (``SdeRestorerTask``: one noise-matching
  step at a random t of T = 100) also get random unit embeddings of the config's context size,
  as precomputed DA-CLIP embeddings arrive in a batch. DA-CLIP controller:
  ``forward(images, captions)`` + ``loss`` (content InfoNCE + degradation loss) on (batch, 3,
  image_size) images at the CLIP config's size, eight distinct caption strings (tokenised each
  step, as in training) and one random DA-CLIP type per sample. ``--warmup-steps`` untimed, then
  ``--steps`` timed (CUDA synchronised). CPU: the tiny configs (``daclip-tiny``, ``daclip-demo``,
  ``nafnet-tiny``, ``nafnet-daclip-tiny``, ``irsde-daclip-tiny``); CUDA adds the paper sizes
  ``daclip-vit-b-32``, ``nafnet-proxy``, ``nafnet-daclip``, ``irsde-daclip`` (``pretrained``
  overridden to None: random weights, same speed, no download) and reports
  ``torch.cuda.max_memory_allocated`` over the timed steps (reset after the warm-up). A model
  that cannot be built (e.g. open_clip missing or its files unavailable) gets a skip row with
  the reason instead of a crash.

Noise: CPU figures on a shared machine vary with other load; the demo split is ~20 MB, so both
loaders read from the page cache (disk speed is not measured). fp32 throughout.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, get_worker_info

from degradations.names import DACLIP_TYPES
from uir.dataset import schema
from uir.dataset.export import export_daclip_csv
from uir_models.data import LoaderConfig, train_loader
from uir_models.data.pipeline import read_samples
from uir_models.data.transforms import SampleDecoder, collate, decode_rgb
from uir_models.factory import create_model, get_model_config
from uir_models.sde import IRSDE, SdeConfig
from uir_models.training import RestorerTask, resolve_device
from uir_models.training.tasks import ConditionedRestorerTask, SdeRestorerTask

ROOT = Path(__file__).resolve().parent.parent
TYPES = tuple(str(t) for t in DACLIP_TYPES)
CAPTIONS = (
    "a photo of a dog on a beach",
    "a red car parked on a street",
    "a mountain lake under a cloudy sky",
    "two people walking in a park",
    "a bowl of fruit on a wooden table",
    "a city skyline at night",
    "a cat sleeping on a sofa",
    "a field of flowers in spring",
)


# --- data loading -------------------------------------------------------------------------


def ensure_shards(folder: Path) -> None:
    """Build the demo shards when the folder has no manifest (only the default demo folder)."""
    if (folder / "manifest.json").is_file():
        return
    if folder.resolve() != (ROOT / "data/shards/demo").resolve():
        raise SystemExit(f"{folder}: no manifest.json (build the shards first)")
    uir = Path(sys.executable).parent / "uir"
    cmd = [str(uir), "build", "demo", "--steps", "base", "--engine", "local"]
    print(f"building the demo shards: {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    if not (folder / "manifest.json").is_file():
        raise SystemExit(f"{folder}: still no manifest.json after the build")


class CsvPairs(Dataset):
    """The reference's layout: a CSV row -> LQ file + GT file (``lq`` -> ``gt`` folder), decoded
    and cropped by the shard loader's ``SampleDecoder``."""

    def __init__(self, csv_path: Path, decoder: SampleDecoder, seed: int) -> None:
        with open(csv_path, newline="") as file:
            rows = list(csv.DictReader(file, delimiter="\t"))
        self.rows = [(row["filepath"], row["title"]) for row in rows]
        self.decoder = decoder
        self.seed = seed
        self._rng: np.random.Generator | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self._rng is None:  # one generator per worker, as the shard loader has
            info = get_worker_info()
            self._rng = np.random.default_rng([self.seed, info.id if info else 0])
        lq_path, title = self.rows[index]
        caption, _, label = title.rpartition(": ")
        gt_path = Path(lq_path).parent.parent / "gt" / Path(lq_path).name
        raw = {
            "__key__": Path(lq_path).stem,
            schema.LQ: Path(lq_path).read_bytes(),
            schema.HQ: gt_path.read_bytes(),
            "meta": {"labels": [label], "caption": caption, "prompt": caption},
        }
        return self.decoder(raw, self._rng)


def megapixels(pairs: Iterable[tuple[bytes, bytes]]) -> float:
    """Mean decoded LQ + HQ megapixels per sample (untimed: how much PNG each sample is)."""
    sizes = [
        sum(int(np.prod(decode_rgb(data, "size").shape[:2])) for data in pair) for pair in pairs
    ]
    return float(np.mean(sizes)) / 1e6


def time_batches(batches: Iterable[dict[str, Any]], warmup: int, timed: int) -> dict[str, Any]:
    """Samples/s over ``timed`` batches after ``warmup`` untimed ones."""
    iterator: Iterator[dict[str, Any]] = iter(batches)
    shape = None
    for _ in range(warmup):
        shape = tuple(next(iterator)["lq"].shape)
    samples = 0
    start = time.perf_counter()
    for _ in range(timed):
        batch = next(iterator)
        samples += len(batch["lq"])
        shape = tuple(batch["lq"].shape)
    seconds = time.perf_counter() - start
    return {
        "samples": samples,
        "seconds": seconds,
        "samples_per_second": samples / seconds,
        "batch_shape": list(shape or ()),
    }


def bench_loaders(args: argparse.Namespace) -> dict[str, Any]:
    folder = args.shards
    ensure_shards(folder)
    total = args.warmup_batches + args.batches
    config = LoaderConfig(
        batch_size=args.batch,
        crop_size=args.crop,
        num_workers=args.workers,
        seed=0,
        batches_per_epoch=total,
    )
    loader = train_loader(folder, "train", TYPES, config, rank=0, world_size=1)
    shards = time_batches(loader, args.warmup_batches, args.batches)
    shards["split_samples"] = loader.stream.shards.num_samples
    shards["shard_files"] = len(loader.stream.shards.urls)
    shards["megapixels_per_sample"] = megapixels(
        (raw[schema.LQ], raw[schema.HQ]) for raw in read_samples(loader.stream.shards.urls)
    )

    decoder = SampleDecoder(TYPES, "random", args.crop, flip=True, upsample_lq=True)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        out = Path(tmp)
        report = export_daclip_csv(folder, out, splits=("train",))
        dataset = CsvPairs(out / "daclip_train.csv", decoder, seed=0)
        if len(dataset) < args.batch:
            raise SystemExit(f"only {len(dataset)} single-label train samples to export")
        sampler = RandomSampler(
            dataset,
            num_samples=total * args.batch,
            generator=torch.Generator().manual_seed(0),
        )
        png_loader = DataLoader(
            dataset,
            batch_size=args.batch,
            sampler=sampler,
            num_workers=args.workers,
            collate_fn=collate,
            drop_last=True,
        )
        pngs = time_batches(png_loader, args.warmup_batches, args.batches)
        pngs["split_samples"] = len(dataset)
        pngs["skipped_multi_label"] = sum(report.skipped.values())
        pngs["megapixels_per_sample"] = megapixels(
            (
                Path(path).read_bytes(),
                (Path(path).parent.parent / "gt" / Path(path).name).read_bytes(),
            )
            for path, _ in dataset.rows
        )
    return {
        "shards": shards,
        "pngs": pngs,
        "shards_over_pngs": shards["samples_per_second"] / pngs["samples_per_second"],
    }


# --- training steps -----------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_inputs(model: torch.nn.Module, name: str, args: argparse.Namespace, device: torch.device):
    """(kind, image side, loss function) for one model."""
    gen = torch.Generator().manual_seed(0)
    if get_model_config(name).get("arch") == "daclip":
        side = model.image_size
        images = torch.rand(args.batch, 3, *side, generator=gen).to(device)
        captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(args.batch)]
        labels = torch.randint(0, len(model.degradation_types), (args.batch,), generator=gen)
        targets = torch.nn.functional.one_hot(labels, len(model.degradation_types)).float()
        targets = targets.to(device)

        def loss() -> torch.Tensor:
            return model.loss(model(images, captions), targets)["loss"]

        return "controller", side, loss
    lq = torch.rand(args.batch, 3, args.crop, args.crop, generator=gen).to(device)
    hq = torch.rand(args.batch, 3, args.crop, args.crop, generator=gen).to(device)
    batch = {"lq": lq, "hq": hq}
    arch = get_model_config(name).get("arch", "nafnet")
    if arch == "nafnet":
        task: Any = RestorerTask(model)
    else:  # DA-CLIP-conditioned: precomputed unit embeddings ride along in the batch
        dim = model.config.context_dim
        for key in ("degra_emb", "content_emb"):
            emb = torch.randn(args.batch, dim, generator=gen)
            batch[key] = torch.nn.functional.normalize(emb, dim=-1).to(device)
        task = (
            SdeRestorerTask(model, IRSDE(SdeConfig()))
            if arch == "irsde_unet"
            else ConditionedRestorerTask(model)
        )

    def restorer_loss() -> torch.Tensor:
        return task.loss(model, batch)["loss"]

    return f"restorer ({arch})", (args.crop, args.crop), restorer_loss


def bench_step(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    overrides = {"pretrained": None} if name == "daclip-vit-b-32" else None
    row: dict[str, Any] = {"model": name}
    try:
        torch.manual_seed(0)
        model = create_model(name, overrides).to(device)
    except Exception as err:  # open_clip missing, weights unavailable, ...
        row["skipped"] = f"{type(err).__name__}: {err}".splitlines()[0][:160]
        return row
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    kind, side, loss_fn = _step_inputs(model, name, args, device)

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        return loss

    for _ in range(args.warmup_steps):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        last = step()
    _sync(device)
    seconds = time.perf_counter() - start
    if not torch.isfinite(last.detach()).item():
        raise RuntimeError(f"{name}: non-finite loss")
    row.update(
        kind=kind,
        image=list(side),
        params_m=sum(p.numel() for p in model.parameters()) / 1e6,
        trainable_m=sum(p.numel() for p in params) / 1e6,
        steps=args.steps,
        seconds=seconds,
        steps_per_second=args.steps / seconds,
        samples_per_second=args.steps * args.batch / seconds,
        peak_gib=(
            torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        ),
    )
    return row


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer batches/steps (< 60 s CPU)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, auto")
    parser.add_argument("--shards", type=Path, default=ROOT / "data/shards/demo")
    parser.add_argument("--crop", type=int, default=128, help="crop side (loaders, restorers)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (both)")
    parser.add_argument("--batches", type=int, help="timed loader batches (default 40, quick 12)")
    parser.add_argument("--warmup-batches", type=int, help="default 4, quick 2")
    parser.add_argument("--steps", type=int, help="timed steps (CPU 20/quick 5, CUDA 50)")
    parser.add_argument("--warmup-steps", type=int, help="CPU 3/quick 2, CUDA 10")
    parser.add_argument(
        "--models", nargs="+", help="factory names (default: tiny on CPU, + paper sizes on CUDA)"
    )
    parser.add_argument("--skip-loaders", action="store_true", help="only the training steps")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    defaults = {
        "batches": 12 if args.quick else 40,
        "warmup_batches": 2 if args.quick else 4,
        "steps": 50 if cuda else (5 if args.quick else 20),
        "warmup_steps": 10 if cuda else (2 if args.quick else 3),
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.models is None:
        args.models = [
            "daclip-tiny", "daclip-demo", "nafnet-tiny", "nafnet-daclip-tiny", "irsde-daclip-tiny"
        ]
        if cuda:
            args.models += ["daclip-vit-b-32", "nafnet-proxy", "nafnet-daclip", "irsde-daclip"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    where = torch.cuda.get_device_name(device) if cuda else f"cpu, {torch.get_num_threads()} thr"
    print(f"device {where}; batch {args.batch}, crop {args.crop}, workers {args.workers}; fp32")
    figures: dict[str, Any] = {
        "device": where,
        "torch": torch.__version__,
        "batch": args.batch,
        "crop": args.crop,
        "workers": args.workers,
        "quick": args.quick,
    }

    if not args.skip_loaders:
        loaders = bench_loaders(args)
        figures["loaders"] = loaders
        print()
        print(
            f"data loading, split 'train' of {args.shards}: {args.warmup_batches} warm-up + "
            f"{args.batches} timed batches"
        )
        header = (
            f"{'source':<34}{'samples':>8}{'MP/sample':>10}{'samples/s':>11}{'MP/s':>8}"
            f"{'ms/batch':>10}"
        )
        print(header)
        print("-" * len(header))
        labels = {
            "shards": f"shards ({loaders['shards']['shard_files']} tar, train_loader)",
            "pngs": "loose PNGs (DA-CLIP CSV, Dataset)",
        }
        for key, label in labels.items():
            fig = loaders[key]
            mp, rate = fig["megapixels_per_sample"], fig["samples_per_second"]
            ms = 1e3 * fig["seconds"] / args.batches
            print(
                f"{label:<34}{fig['split_samples']:>8}{mp:>10.3f}{rate:>11.1f}"
                f"{mp * rate:>8.1f}{ms:>10.1f}"
            )
        print(f"shards / PNGs = {loaders['shards_over_pngs']:.2f}x")

    steps = []
    for name in args.models:
        steps.append(bench_step(name, args, device))
        if cuda:
            torch.cuda.empty_cache()
    figures["training_steps"] = steps
    print()
    print(
        f"training steps (forward + backward + AdamW, random inputs): {args.warmup_steps} "
        f"warm-up + {args.steps} timed, batch {args.batch}"
    )
    header = (
        f"{'model':<20}{'kind':<26}{'input':>9}{'params M':>10}{'train M':>9}"
        f"{'steps/s':>9}{'samples/s':>11}{'peak GiB':>10}"
    )
    print(header)
    print("-" * len(header))
    for row in steps:
        if "skipped" in row:
            print(f"{row['model']:<20}SKIPPED: {row['skipped']}")
            continue
        size = "x".join(str(s) for s in row["image"])
        peak = f"{row['peak_gib']:.2f}" if row["peak_gib"] is not None else "-"
        print(
            f"{row['model']:<20}{row['kind']:<26}{size:>9}{row['params_m']:>10.2f}"
            f"{row['trainable_m']:>9.2f}{row['steps_per_second']:>9.2f}"
            f"{row['samples_per_second']:>11.1f}{peak:>10}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
