"""The quality report: per-type statistics, the val confusion matrix, histograms.

Built from the render and score stamps alone, so it costs nothing to rebuild. The same figures
go into the manifest, the dataset card, DVC metrics/plots and the Prefect artifact.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from uir.quality.config import TIERS
from uir_models.metrics import against_chance
from uir_models.quality import QUALITY_CLASSES

HISTOGRAM_BINS = 10


@dataclass(frozen=True)
class SampleQuality:
    key: str
    split: str
    labels: tuple[str, ...]
    fold: int
    psnr_lq: float
    psnr_mq: float
    probabilities: dict[str, list[float]]  # tier -> P(terrible, mediocre, excellent)
    proxy_saw_type: dict[str, bool]  # label -> was it in the rendering proxy's training data


def _mean(values: Iterable[float]) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return round(float(np.mean(finite)), 4) if finite else None


def per_type(samples: Sequence[SampleQuality]) -> dict[str, dict[str, Any]]:
    """Per degradation type (a mixed sample counts for each of its types)."""
    types = sorted({label for s in samples for label in s.labels})
    table = {}
    for name in types:
        group = [s for s in samples if name in s.labels]
        seen = [s for s in group if s.proxy_saw_type[name]]
        table[name] = {
            "samples": len(group),
            # the proxy is judged on types it was trained on, as Perceive-IR uses it
            "psnr_samples": len(seen),
            # a mean over a handful of samples hides whether one sample decides it
            "psnr_improved": sum(s.psnr_mq > s.psnr_lq for s in seen),
            "psnr_lq": _mean(s.psnr_lq for s in seen),
            "psnr_mq": _mean(s.psnr_mq for s in seen),
            "mean_probabilities": {
                tier: [
                    round(float(v), 4)
                    for v in np.mean([s.probabilities[tier] for s in group], axis=0)
                ]
                for tier in TIERS
            },
        }
        lq, mq = table[name]["psnr_lq"], table[name]["psnr_mq"]
        table[name]["psnr_gain"] = round(mq - lq, 4) if lq is not None and mq is not None else None
    return table


def confusion(samples: Sequence[SampleQuality]) -> tuple[list[list[int]], float | None]:
    """3x3 counts (row: true tier bad/medium/good, column: predicted class) and accuracy."""
    matrix = np.zeros((3, 3), dtype=int)
    for s in samples:
        for truth, tier in enumerate(TIERS):
            matrix[truth, int(np.argmax(s.probabilities[tier]))] += 1
    total = int(matrix.sum())
    accuracy = round(float(np.trace(matrix)) / total, 4) if total else None
    return matrix.tolist(), accuracy


def confusion_rows(samples: Sequence[SampleQuality]) -> list[tuple[str, str]]:
    """(actual, predicted) per image, the shape DVC's confusion template reads."""
    return [
        (QUALITY_CLASSES[truth], QUALITY_CLASSES[int(np.argmax(s.probabilities[tier]))])
        for s in samples
        for truth, tier in enumerate(TIERS)
    ]


def histogram_rows(samples: Sequence[SampleQuality], label: str) -> list[tuple[Any, ...]]:
    """Counts of P(excellent) in 10 bins for LQ, MQ and HQ of one type."""
    edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    group = [s for s in samples if label in s.labels]
    counts = {
        tier: np.histogram([s.probabilities[tier][2] for s in group], bins=edges)[0]
        for tier in TIERS
    }
    return [
        (f"{edges[i]:.1f}", *(int(counts[tier][i]) for tier in TIERS))
        for i in range(HISTOGRAM_BINS)
    ]


def summarise(samples: Sequence[SampleQuality], dropped: int, flagged: int) -> dict[str, Any]:
    val = [s for s in samples if s.split == "val"]
    matrix, accuracy = confusion(val)
    correct, judged = int(np.trace(matrix)), int(np.sum(matrix))
    types = per_type(samples)
    val_types = per_type_accuracy(val)
    gains = [t["psnr_gain"] for t in types.values() if t["psnr_gain"] is not None]
    return {
        "samples": len(samples),
        "dropped": dropped,
        "flagged": flagged,
        "psnr_lq": _mean(s.psnr_lq for s in samples),
        "psnr_mq": _mean(s.psnr_mq for s in samples),
        "types_where_mq_beats_lq": sum(g > 0 for g in gains),
        "types_with_psnr": len(gains),
        "val": {
            "samples": len(val),
            "accuracy": accuracy,
            "chance": round(1 / 3, 4),
            **against_chance(correct, judged, 1 / len(QUALITY_CLASSES)),
            "confusion": matrix,
            "classes": list(QUALITY_CLASSES),
            "per_type_accuracy": val_types,
        },
        "per_type": types,
    }


def per_type_accuracy(samples: Sequence[SampleQuality]) -> dict[str, float | None]:
    types = sorted({label for s in samples for label in s.labels})
    return {name: confusion([s for s in samples if name in s.labels])[1] for name in types}
