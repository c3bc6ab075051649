"""Step ``render``: the medium image of every sample, one medium shard per base shard.

A sample of fold f is restored by the proxy trained on fold 1-f. Medium shards hold only
``<key>.mq.png``; a stamp beside each records its inputs' digest and the per-sample PSNR of LQ
and MQ against HQ, which the report aggregates without decoding anything again.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from uir.dataset import schema
from uir.dataset.atomic import remove_temporaries
from uir.dataset.tarwriter import TarShardWriter
from uir.imageio import encode_png
from uir.quality.folds import FOLDS, open_base
from uir.quality.job import QualityError, QualityJob, current_stamp, digest, read_stamp, write_stamp
from uir.quality.samples import decode_png, fold_of, to_size

# The medium shards are a work product: deflate level 1 halves them for ~2 ms per image.
MQ_PNG_COMPRESSION = 1


def stamp_path(job: QualityJob, shard: str) -> Path:
    return job.mq_dir / (Path(shard).stem + ".json")


def _proxy_digests(job: QualityJob) -> list[str]:
    digests = []
    for fold in FOLDS:
        stamp = read_stamp(job.proxy_stamp(fold))
        if stamp is None or not stamp.get("complete"):
            raise QualityError(
                f"proxy restorer of fold {fold} is not trained; run the proxy step first "
                f"(`uir build {job.dataset.name} --steps proxy`)"
            )
        digests.append(stamp["digest"])
    return digests


def render_digest(job: QualityJob, shard_sha256: str) -> str:
    return digest(
        "render",
        shard_sha256,
        _proxy_digests(job),
        job.quality.digest_of("render"),
        schema.ENCODER_VERSION,
        MQ_PNG_COMPRESSION,
    )


@functools.cache
def _proxy(checkpoint: Path, stamp_digest: str, device: str) -> Any:
    """One load per worker process and checkpoint (the digest keys out a retrained one)."""
    from uir_models.quality.proxy import load_proxy

    return load_proxy(checkpoint, device=device)


def render_shard(job: QualityJob, shard: str) -> dict[str, Any]:
    """Write (or reuse) the medium shard of one base shard; returns its stamp."""
    from uir_models.metrics import psnr
    from uir_models.quality.proxy import render_medium

    reader = open_base(job)
    expected = render_digest(job, reader.shard_sha256(shard))
    target = job.mq_dir / shard
    stamp = current_stamp(stamp_path(job, shard), expected)
    if stamp is not None and target.is_file() and target.stat().st_size == stamp["bytes"]:
        return stamp
    job.mq_dir.mkdir(parents=True, exist_ok=True)
    remove_temporaries(job.mq_dir, Path(shard).stem)
    cfg = job.quality.render
    proxy_digests = _proxy_digests(job)
    samples: dict[str, dict[str, Any]] = {}
    writer = TarShardWriter(target)
    try:
        for key, members in reader.iter_shard(shard):
            meta = json.loads(members[schema.METADATA])
            fold = fold_of(meta["hq_sha256"], job.quality.folds.salt)
            renderer = 1 - fold
            model = _proxy(job.proxy_checkpoint(renderer), proxy_digests[renderer], cfg.device)
            hq = decode_png(members[schema.HQ])
            lq = to_size(decode_png(members[schema.LQ]), (hq.shape[1], hq.shape[0]))
            mq = render_medium(
                model, lq, tile=cfg.tile, overlap=cfg.overlap, labels=meta["labels"]
            )
            writer.write(key, {schema.MQ: encode_png(mq, MQ_PNG_COMPRESSION)})
            samples[key] = {
                "fold": fold,
                "labels": meta["labels"],
                "split": meta["split"],
                "psnr_lq": round(psnr(lq, hq), 4),
                "psnr_mq": round(psnr(mq, hq), 4),
            }
        written = writer.close()
    except BaseException:
        writer.abort()
        raise
    return write_stamp(
        stamp_path(job, shard),
        expected,
        shard=shard,
        bytes=written.bytes,
        sha256=written.sha256,
        samples=samples,
    )
