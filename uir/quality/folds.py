"""Step ``proxy``: one proxy restorer per fold, trained on that fold's training pairs.

The restorer of fold k later renders the medium images of fold 1-k, so no medium image comes
from a model that saw its clean image (Perceive-IR's 2-fold cross-validation).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from degradations.seeding import derive_seed
from uir.quality.job import (
    QualityError,
    QualityJob,
    current_stamp,
    digest,
    stderr_steps,
    write_csv,
    write_stamp,
)
from uir.quality.samples import DatasetReader, SampleRef

FOLDS = (0, 1)
log = logging.getLogger(__name__)


class FoldPairs:
    """The (LQ, HQ) training pairs of one fold, decoded on access."""

    def __init__(self, reader: DatasetReader, refs: list[SampleRef]) -> None:
        self.reader = reader
        self.refs = refs

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        ref = self.refs[index]
        return self.reader.pair(ref.shard, ref.key)

    def labels(self, index: int) -> tuple[str, ...]:
        return self.refs[index].labels


def open_base(job: QualityJob) -> DatasetReader:
    try:
        return DatasetReader(job.base_dir)
    except FileNotFoundError as err:
        raise QualityError(f"{err}; build it first (`uir build {job.dataset.name}`)") from None


def fold_refs(job: QualityJob, reader: DatasetReader, fold: int) -> list[SampleRef]:
    splits = set(job.quality.proxy.train_splits)
    refs = [r for r in reader.refs(job.quality.folds.salt) if r.fold == fold and r.split in splits]
    if not refs:
        raise QualityError(
            f"fold {fold} of {job.dataset.name} has no pairs in splits {sorted(splits)} to train "
            f"a proxy restorer on; add images or change quality.{job.dataset.name}.folds.salt"
        )
    return refs


def proxy_digest(job: QualityJob, reader: DatasetReader, fold: int) -> str:
    return digest("proxy", fold, reader.digest, job.quality.digest_of("folds", "proxy"))


def train_fold(
    job: QualityJob, fold: int, progress: Callable[[int, int, float], None] | None = None
) -> dict[str, Any]:
    """Train (or resume, or reuse) the proxy of ``fold``; returns its stamp."""
    from uir_models.quality.proxy import ProxyTrainSettings, train_proxy

    reader = open_base(job)
    expected = proxy_digest(job, reader, fold)
    stamp_path = job.proxy_stamp(fold)
    stamp = current_stamp(stamp_path, expected)
    if stamp is not None and stamp.get("complete"):
        return stamp
    checkpoint = job.proxy_checkpoint(fold)
    if stamp is None:  # new inputs: a checkpoint left from other data must not be resumed
        checkpoint.unlink(missing_ok=True)
        write_stamp(stamp_path, expected, fold=fold, complete=False)
    refs = fold_refs(job, reader, fold)
    cfg = job.quality.proxy
    settings = ProxyTrainSettings(
        model=cfg.model,
        iterations=cfg.iterations,
        batch_size=cfg.batch_size,
        patch_size=cfg.patch_size,
        lr=cfg.lr,
        min_lr=cfg.min_lr,
        weight_decay=cfg.weight_decay,
        loss=cfg.loss,
        balance=cfg.balance,
        channel_shuffle=cfg.channel_shuffle,
        condition=cfg.condition,
        checkpoint_every=cfg.checkpoint_every,
        device=cfg.device,
        seed=derive_seed(job.quality.seed, f"proxy/fold-{fold}") % 2**63,
    )
    log.info("proxy fold %d: %d pairs, %d iterations", fold, len(refs), cfg.iterations)
    progress = progress or stderr_steps(f"{job.dataset.name} proxy fold {fold}")
    result = train_proxy(FoldPairs(reader, refs), settings, checkpoint, progress=progress)
    write_csv(
        job.proxy_dir / f"fold-{fold}.losses.csv",
        ["step", "loss"],
        [(step, f"{loss:.6f}") for step, loss in enumerate(result.losses, 1)],
    )
    return write_stamp(
        stamp_path,
        expected,
        fold=fold,
        complete=True,
        pairs=len(refs),
        types=sorted({label for ref in refs for label in ref.labels}),
        iterations=cfg.iterations,
        resumed_from=result.resumed_from,
        final_loss=float(np.mean(result.losses[-max(1, len(result.losses) // 20) :])),
    )
