"""Step ``label``: the labelled dataset, i.e. the base shards plus ``mq.png`` and a ``quality``
block in each sample's JSON, curated; then its manifest, card and quality report.

HQ/LQ/mask/caption bytes are copied from the base shards untouched, so a labelled sample's
pixels are exactly the base sample's; only the JSON grows and ``mq.png`` is added.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from uir.dataset import schema
from uir.dataset.atomic import remove_temporaries, write_json_atomic, write_text_atomic
from uir.dataset.config import SPLITS
from uir.dataset.manifest import dataset_card, write_indexes
from uir.dataset.rejects import read_rejects, write_rejects
from uir.dataset.samples import tally
from uir.dataset.tarwriter import ShardFile, TarShardWriter
from uir.quality.config import TIERS
from uir.quality.curation import decide, dropped_record
from uir.quality.folds import FOLDS, open_base
from uir.quality.job import (
    QualityError,
    QualityJob,
    current_stamp,
    digest,
    read_stamp,
    write_csv,
    write_stamp,
)
from uir.quality.perceive import STAMP as PERCEIVER_STAMP
from uir.quality.perceive import score_stamp_path
from uir.quality.render import stamp_path as mq_stamp_path
from uir.quality.report import (
    SampleQuality,
    confusion_rows,
    histogram_rows,
    summarise,
)
from uir.quality.samples import TarMembers
from uir_models.quality import QUALITY_CLASSES

LABELS_SUFFIX = "_labels.json"
QUALITY_FORMAT = "uir-forge-quality/1"


def labels_stamp_path(job: QualityJob, shard: str) -> Path:
    return job.output_dir / (Path(shard).stem + LABELS_SUFFIX)


def _stamps(job: QualityJob, shard: str) -> tuple[dict[str, Any], dict[str, Any]]:
    render = read_stamp(mq_stamp_path(job, shard))
    scores = read_stamp(score_stamp_path(job, shard))
    if render is None or scores is None:
        raise QualityError(f"{shard}: medium images or scores missing; run render and scoring")
    return render, scores


def label_digest(job: QualityJob, shard: str) -> str:
    render, scores = _stamps(job, shard)
    return digest(
        "label",
        render["digest"],
        scores["digest"],
        job.quality.digest_of("curation"),
        job.dataset.shards.md5,
        schema.SCHEMA_VERSION,
    )


def _labeller(job: QualityJob) -> dict[str, Any]:
    """Which models made the labels: short digests of the proxies and of the prompts."""
    proxies = [read_stamp(job.proxy_stamp(fold)) or {} for fold in FOLDS]
    prompts = read_stamp(job.perceiver_dir / PERCEIVER_STAMP) or {}
    return {
        "proxy": [p.get("digest", "")[:16] for p in proxies],
        "perceiver": prompts.get("digest", "")[:16],
    }


def _intact(target: Path, shard: dict[str, Any] | None) -> bool:
    """The stamp's shard is still there (a shard whose samples were all dropped has none)."""
    return shard is None or (target.is_file() and target.stat().st_size == shard["bytes"])


def label_shard(job: QualityJob, shard: str) -> dict[str, Any]:
    """Write (or reuse) the labelled copy of one base shard; returns its stamp."""
    expected = label_digest(job, shard)
    path = labels_stamp_path(job, shard)
    target = job.output_dir / shard
    stamp = current_stamp(path, expected)
    if stamp is not None and (
        stamp["shard"] is None
        or (target.is_file() and target.stat().st_size == stamp["shard"]["bytes"])
    ):
        return stamp
    job.output_dir.mkdir(parents=True, exist_ok=True)
    remove_temporaries(job.output_dir, Path(shard).stem)
    render, scores = _stamps(job, shard)
    reader = open_base(job)
    medium = TarMembers(job.mq_dir / shard)
    rules = job.quality.curation.rules
    labeller = _labeller(job)
    counts: dict[str, Counter[str]] = {name: Counter() for name in ("labels", "kinds", "recipes")}
    dropped, flagged = [], []
    writer = TarShardWriter(target, md5=job.dataset.shards.md5)
    try:
        for key, members in reader.iter_shard(shard):
            meta = json.loads(members[schema.METADATA])
            rendered = render["samples"][key]
            probabilities = scores["scores"][key]
            decision = decide(rules, meta["split"], probabilities)
            if decision.dropped:
                dropped.append(dropped_record(shard, key, meta["split"], meta["labels"], decision))
                continue
            if decision.flags:
                flagged.append(key)
            meta["quality"] = {
                "format": QUALITY_FORMAT,
                "fold": rendered["fold"],
                "classes": list(QUALITY_CLASSES),
                "probabilities": {tier: probabilities[tier] for tier in TIERS},
                "psnr": {"lq": rendered["psnr_lq"], "mq": rendered["psnr_mq"]},
                "flags": decision.flags,
                "labeller": labeller,
            }
            members[schema.METADATA] = json.dumps(meta, sort_keys=True).encode()
            members[schema.MQ] = medium.read(key, [schema.MQ])[schema.MQ]
            writer.write(key, members)
            tally(meta, counts)
        written: ShardFile | None = writer.close() if writer.samples else None
        if written is None:
            writer.abort()
            target.unlink(missing_ok=True)
    except BaseException:
        writer.abort()
        raise
    return write_stamp(
        path,
        expected,
        shard=vars(written) if written else None,
        source=shard,
        split=next(e["split"] for e in reader.manifest["shards"] if e["name"] == shard),
        dropped=dropped,
        flagged=flagged,
        counts={name: dict(sorted(counter.items())) for name, counter in counts.items()},
    )


def _samples(job: QualityJob, shards: Sequence[str]) -> list[SampleQuality]:
    proxy_types = [
        set((read_stamp(job.proxy_stamp(fold)) or {}).get("types", [])) for fold in FOLDS
    ]
    samples = []
    for shard in shards:
        render, scores = _stamps(job, shard)
        for key, rendered in render["samples"].items():
            labels = tuple(rendered["labels"])
            trained = proxy_types[1 - rendered["fold"]]
            samples.append(
                SampleQuality(
                    key,
                    rendered["split"],
                    labels,
                    rendered["fold"],
                    float(rendered["psnr_lq"]),
                    float(rendered["psnr_mq"]),
                    scores["scores"][key],
                    {label: label in trained for label in labels},
                )
            )
    return samples


def _sum(stamps: Sequence[dict[str, Any]], field: str) -> dict[str, int]:
    total: Counter[str] = Counter()
    for stamp in stamps:
        total.update(stamp["counts"][field])
    return dict(sorted(total.items()))


def finalize_labels(job: QualityJob, stamps: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Dataset files of the labelled shards (manifest last) and the quality report."""
    reader = open_base(job)
    by_source = {stamp["source"]: stamp for stamp in stamps}
    missing = [shard for shard in reader.shards if shard not in by_source]
    if missing:
        raise QualityError(f"labelled shards missing for {missing}")
    ordered = [by_source[shard] for shard in reader.shards]
    folder = job.output_dir
    remove_temporaries(folder)
    keep = {s["shard"]["name"] for s in ordered if s["shard"]}
    keep |= {labels_stamp_path(job, s["source"]).name for s in ordered}
    for path in sorted(folder.iterdir()):
        stale = path.suffix == ".tar" or path.name.endswith(LABELS_SUFFIX)
        if stale and path.name not in keep:
            path.unlink()
    shards = [(s["split"], ShardFile(**s["shard"])) for s in ordered if s["shard"]]
    dropped = [record for s in ordered for record in s["dropped"]]
    samples = _samples(job, reader.shards)
    quality = summarise(samples, len(dropped), sum(len(s["flagged"]) for s in ordered))

    base = reader.manifest
    write_rejects(folder / schema.REJECTS, read_rejects(job.base_dir / schema.REJECTS))
    write_text_atomic(
        folder / schema.DROPPED, "".join(json.dumps(r, sort_keys=True) + "\n" for r in dropped)
    )
    write_indexes(folder, base["dataset"], shards)
    counts = dict(base["counts"])
    counts["samples"] = sum(s.samples for _, s in shards)
    counts["splits"] = {
        split: sum(s.samples for shard_split, s in shards if shard_split == split)
        for split in SPLITS
    }
    counts["labels"] = {
        split: _sum([s for s in ordered if s["split"] == split], "labels") for split in SPLITS
    }
    counts["kinds"] = _sum(ordered, "kinds")
    counts["recipes"] = _sum(ordered, "recipes")
    counts["dropped"] = len(dropped)
    manifest = {
        **base,
        "counts": counts,
        "shards": [{"split": split, **vars(s)} for split, s in shards],
        "quality": {
            "format": QUALITY_FORMAT,
            "derived_from": {"path": str(job.dataset.output), "digest": reader.digest},
            "params_hash": job.quality.digest_of(
                "folds", "proxy", "render", "perceiver", "curation"
            ),
            "labeller": _labeller(job),
            "curation": [rule.model_dump(mode="json") for rule in job.quality.curation.rules],
            **quality,
        },
    }
    write_reports(job, samples, quality)
    write_text_atomic(folder / schema.CARD, dataset_card(manifest) + quality_card(manifest))
    write_json_atomic(folder / schema.MANIFEST, manifest)
    return manifest


def write_reports(
    job: QualityJob, samples: Sequence[SampleQuality], quality: dict[str, Any]
) -> None:
    """DVC metrics (one JSON) and plots (val confusion, per-type P(excellent) histograms)."""
    folder = job.report_dir
    metrics = {
        "val_accuracy": quality["val"]["accuracy"],
        "val_accuracy_ci95": [quality["val"]["ci95_low"], quality["val"]["ci95_high"]],
        "val_p_above_chance": quality["val"]["p_above_chance"],
        "val_samples": quality["val"]["samples"],
        "dropped": quality["dropped"],
        "flagged": quality["flagged"],
        "psnr_lq": quality["psnr_lq"],
        "psnr_mq": quality["psnr_mq"],
        "per_type": {
            name: {
                "psnr_lq": t["psnr_lq"],
                "psnr_mq": t["psnr_mq"],
                "psnr_gain": t["psnr_gain"],
                "psnr_samples": t["psnr_samples"],
                "psnr_improved": t["psnr_improved"],
                "val_accuracy": quality["val"]["per_type_accuracy"].get(name),
            }
            for name, t in quality["per_type"].items()
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "metrics.json", metrics)
    val = [s for s in samples if s.split == "val"]
    write_csv(folder / "confusion.csv", ["actual", "predicted"], confusion_rows(val))
    histograms = folder / "histograms"
    histograms.mkdir(exist_ok=True)
    names = {label for s in samples for label in s.labels}
    for path in histograms.glob("*.csv"):
        if path.stem not in names:
            path.unlink()
    for name in sorted(names):
        write_csv(
            histograms / f"{name}.csv", ["p_excellent", *TIERS], histogram_rows(samples, name)
        )


def quality_card(manifest: dict[str, Any]) -> str:
    """The card's quality section: what the labels are and how good the labeller is."""
    quality = manifest["quality"]
    val = quality["val"]
    rows = []
    for name, t in quality["per_type"].items():
        probs = t["mean_probabilities"]
        rows.append(
            f"| {name} | {t['samples']} | {t['psnr_lq']} | {t['psnr_mq']} | "
            f"{t['psnr_improved']}/{t['psnr_samples']} | "
            + " | ".join(f"{probs[tier][2]:.2f}" for tier in TIERS)
            + f" | {val['per_type_accuracy'].get(name)} |"
        )
    matrix = "\n".join(
        f"| {QUALITY_CLASSES[i]} | " + " | ".join(str(v) for v in row) + " |"
        for i, row in enumerate(val["confusion"])
    )
    rules = (
        "\n".join(
            f"- `{r['name']}`: {r['action']} when {r['tier'].upper()} "
            f"P({r['quality']}) > {r['above']}"
            for r in quality["curation"]
        )
        or "- none"
    )
    return f"""
## Quality labels (Perceive-IR)

Each sample also holds `{schema.MQ}`: its LQ restored by a proxy restorer trained on the other
fold (2-fold cross-validation by HQ image), and `quality` in its JSON: the fold, PSNR of LQ and
MQ against HQ, and the prompt-learned CLIP perceiver's P(terrible, mediocre, excellent) for LQ,
MQ and HQ. Curation dropped {quality["dropped"]} samples (listed with reasons in
`{schema.DROPPED}`) and flagged {quality["flagged"]}. Rules:
{rules}

Perceiver three-way accuracy on val: **{val["accuracy"]}** over {val["samples"]} samples x 3
tiers (95% interval {val["ci95_low"]}-{val["ci95_high"]}; chance {val["chance"]}, one-sided
binomial p {val["p_above_chance"]}: above 0.05, it is not shown to beat guessing). Confusion on
val (rows: true tier, columns: predicted):

| | terrible | mediocre | excellent |
|---|---|---|---|
{matrix}

| type | samples | PSNR LQ | PSNR MQ | MQ > LQ | P(exc) LQ | P(exc) MQ | P(exc) HQ | val accuracy |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

PSNR is over samples whose rendering proxy was trained on the type; MQ > LQ counts those
samples whose medium image is closer to the HQ than the LQ is.
"""
