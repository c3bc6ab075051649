"""Steps ``perceiver`` (learn the three quality prompts) and the scoring half of ``label``.

The perceiver learns from training-split triplets only; every sample of every split is then
scored, LQ, MQ and HQ alike, one score stamp per base shard.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from degradations.seeding import derive_seed
from uir.dataset import schema
from uir.quality.config import TIERS
from uir.quality.folds import open_base
from uir.quality.job import (
    QualityError,
    QualityJob,
    current_stamp,
    digest,
    read_stamp,
    stderr_steps,
    write_csv,
    write_stamp,
)
from uir.quality.render import stamp_path as mq_stamp_path
from uir.quality.samples import DatasetReader, SampleRef, TarMembers, decode_png, to_size

log = logging.getLogger(__name__)
PROMPTS = "prompts.pt"
CHECKPOINT = "checkpoint.pt"
STAMP = "perceiver.json"


class Triplets:
    """(LQ at HQ size, MQ, HQ) of the chosen samples, decoded on access."""

    def __init__(self, job: QualityJob, reader: DatasetReader, refs: list[SampleRef]) -> None:
        self.reader = reader
        self.refs = refs
        self.mq_dir = job.mq_dir
        self._mq: dict[str, TarMembers] = {}

    def __len__(self) -> int:
        return len(self.refs)

    def labels(self, index: int) -> tuple[str, ...]:
        return self.refs[index].labels

    def medium(self, shard: str, key: str) -> np.ndarray:
        if shard not in self._mq:
            self._mq[shard] = TarMembers(self.mq_dir / shard)
        return decode_png(self._mq[shard].read(key, [schema.MQ])[schema.MQ])

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ref = self.refs[index]
        lq, hq = self.reader.pair(ref.shard, ref.key)
        return lq, self.medium(ref.shard, ref.key), hq


def _render_digests(job: QualityJob, reader: DatasetReader) -> list[str]:
    digests = []
    for shard in reader.shards:
        stamp = read_stamp(mq_stamp_path(job, shard))
        if stamp is None or not (job.mq_dir / shard).is_file():
            raise QualityError(
                f"no medium images for {shard}; run the render step first "
                f"(`uir build {job.dataset.name} --steps render`)"
            )
        digests.append(stamp["digest"])
    return digests


def perceiver_digest(job: QualityJob, reader: DatasetReader) -> str:
    return digest(
        "perceiver",
        reader.digest,
        _render_digests(job, reader),
        job.quality.digest_of("folds", "perceiver"),
    )


def load_bundle(job: QualityJob) -> Any:
    """The frozen CLIP: an open_clip tag, a checkpoint file beside params.yaml, or random
    weights (``pretrained: null``: tests and the offline demo)."""
    import torch

    from uir_models.quality.perceiver import load_clip

    cfg = job.quality.perceiver
    pretrained = cfg.pretrained
    if pretrained is not None and job.quality.resolve_path(pretrained).is_file():
        pretrained = str(job.quality.resolve_path(pretrained))
    # random weights (pretrained: null) must be the same every run
    torch.manual_seed(derive_seed(job.quality.seed, "perceiver/clip") % 2**63)
    return load_clip(cfg.clip_model, pretrained)


def _perceiver(job: QualityJob) -> Any:
    import torch

    from uir_models.quality.perceiver import QualityPerceiver

    generator = torch.Generator().manual_seed(
        derive_seed(job.quality.seed, "perceiver/context") % 2**63
    )
    return QualityPerceiver(
        load_bundle(job), n_ctx=job.quality.perceiver.n_ctx, generator=generator
    )


def train_prompts(
    job: QualityJob, progress: Callable[[int, int, float], None] | None = None
) -> dict[str, Any]:
    """Learn (or resume, or reuse) the prompts; returns the step's stamp."""
    from uir_models.quality.prompt_training import PerceiverTrainSettings, train_perceiver

    reader = open_base(job)
    expected = perceiver_digest(job, reader)
    folder = job.perceiver_dir
    stamp = current_stamp(folder / STAMP, expected)
    if stamp is not None and stamp.get("complete") and (folder / PROMPTS).is_file():
        return stamp
    folder.mkdir(parents=True, exist_ok=True)
    if stamp is None:
        (folder / CHECKPOINT).unlink(missing_ok=True)
        write_stamp(folder / STAMP, expected, complete=False)
    cfg = job.quality.perceiver
    splits = set(cfg.train_splits)
    refs = [r for r in reader.refs(job.quality.folds.salt) if r.split in splits]
    if not refs:
        raise QualityError(f"no samples in splits {sorted(splits)} to train the perceiver on")
    perceiver = _perceiver(job)
    settings = PerceiverTrainSettings(
        iterations=cfg.iterations,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        min_lr=cfg.min_lr,
        weight_decay=cfg.weight_decay,
        crop=cfg.crop,
        balance=cfg.balance,
        checkpoint_every=cfg.checkpoint_every,
        device=cfg.device,
        seed=derive_seed(job.quality.seed, "perceiver/batches") % 2**63,
    )
    log.info("perceiver: %d triplets, %d iterations", len(refs), cfg.iterations)
    progress = progress or stderr_steps(f"{job.dataset.name} perceiver")
    result = train_perceiver(
        perceiver, Triplets(job, reader, refs), settings, folder / CHECKPOINT, progress
    )
    perceiver.save_context(folder / PROMPTS)
    write_csv(
        folder / "history.csv",
        ["step", "loss", "batch_accuracy"],
        [
            (i, f"{loss:.6f}", f"{acc:.4f}")
            for i, (loss, acc) in enumerate(zip(result.losses, result.accuracies, strict=True), 1)
        ],
    )
    tail = max(1, len(result.losses) // 20)
    return write_stamp(
        folder / STAMP,
        expected,
        complete=True,
        triplets=len(refs),
        iterations=cfg.iterations,
        resumed_from=result.resumed_from,
        final_loss=float(np.mean(result.losses[-tail:])),
        final_batch_accuracy=float(np.mean(result.accuracies[-tail:])),
        clip={"model": cfg.clip_model, "pretrained": cfg.pretrained},
    )


def score_stamp_path(job: QualityJob, shard: str) -> Path:
    return job.score_dir / (Path(shard).stem + ".json")


def score_digest(job: QualityJob, shard: str) -> str:
    render = read_stamp(mq_stamp_path(job, shard))
    prompts = read_stamp(job.perceiver_dir / STAMP)
    if prompts is None or not prompts.get("complete"):
        raise QualityError(
            f"the quality perceiver is not trained; run the perceiver step first "
            f"(`uir build {job.dataset.name} --steps perceiver`)"
        )
    if render is None:
        raise QualityError(f"no medium images for {shard}; run the render step first")
    return digest("score", render["digest"], prompts["digest"], job.quality.perceiver.crop)


def trained_perceiver(job: QualityJob) -> Any:
    """The perceiver with this job's learned prompts (for scoring, or as a restorer's L_clip)."""
    path = job.perceiver_dir / PROMPTS
    if not path.exists():
        raise QualityError(f"no learned prompts at {path}: run `uir build {job.dataset.name}`")
    perceiver = _perceiver(job)
    perceiver.load_context(path)
    return perceiver.eval()


_TRAINED: dict[str, Any] = {}  # per worker process: one load per learned prompt set


def _trained_perceiver(job: QualityJob, prompts_digest: str) -> Any:
    from uir_models.quality.prompt_training import resolve_device

    if prompts_digest not in _TRAINED:
        perceiver = trained_perceiver(job)
        device = resolve_device(job.quality.perceiver.device)
        _TRAINED.clear()
        _TRAINED[prompts_digest] = perceiver.to(device).eval()
    return _TRAINED[prompts_digest]


def score_shard(job: QualityJob, shard: str) -> dict[str, Any]:
    """P(terrible, mediocre, excellent) of LQ, MQ and HQ for every sample of one shard."""
    from uir_models.quality.prompt_training import score_images

    expected = score_digest(job, shard)
    path = score_stamp_path(job, shard)
    stamp = current_stamp(path, expected)
    if stamp is not None:
        return stamp
    reader = open_base(job)
    triplets = Triplets(job, reader, [])
    prompts = read_stamp(job.perceiver_dir / STAMP) or {}
    perceiver = _trained_perceiver(job, prompts["digest"])
    cfg = job.quality.perceiver
    scores: dict[str, dict[str, list[float]]] = {}
    keys: list[str] = []
    images: list[np.ndarray] = []

    def flush() -> None:
        probabilities = score_images(perceiver, images, cfg.crop, cfg.batch_score)
        for i, key in enumerate(keys):
            scores[key] = {
                tier: [round(float(p), 6) for p in probabilities[3 * i + t]]
                for t, tier in enumerate(TIERS)
            }
        keys.clear()
        images.clear()

    for key, members in reader.iter_shard(shard):  # in batches: shards can be large
        hq = decode_png(members[schema.HQ])
        lq = to_size(decode_png(members[schema.LQ]), (hq.shape[1], hq.shape[0]))
        keys.append(key)
        images.extend([lq, triplets.medium(shard, key), hq])
        if len(keys) * len(TIERS) >= cfg.batch_score:
            flush()
    flush()
    return write_stamp(path, expected, shard=shard, scores=scores)
