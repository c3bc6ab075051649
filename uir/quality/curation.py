"""Curation rules over the perceiver's probabilities: drop or flag samples, and say why.

An LQ perceived "excellent" means the degradation is too weak to teach anything; an HQ perceived
"terrible" means a bad source image. Rules are data (params.yaml), decisions are records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from uir.quality.config import CurationRule
from uir_models.quality import QUALITY_CLASSES

CLASS_INDEX = {name: index for index, name in enumerate(QUALITY_CLASSES)}


@dataclass(frozen=True)
class Finding:
    rule: str
    action: str
    tier: str
    quality: str
    probability: float
    above: float

    def reason(self) -> str:
        return (
            f"{self.tier.upper()} perceived {self.quality!r} with p={self.probability:.3f} "
            f"> {self.above}"
        )


@dataclass(frozen=True)
class Decision:
    findings: tuple[Finding, ...] = field(default_factory=tuple)

    @property
    def dropped(self) -> bool:
        return any(f.action == "drop" for f in self.findings)

    @property
    def flags(self) -> list[str]:
        return [f.rule for f in self.findings if f.action == "flag"]


def decide(
    rules: Sequence[CurationRule], split: str, probabilities: Mapping[str, Sequence[float]]
) -> Decision:
    """Every rule that fires on this sample (a sample may be dropped by several)."""
    findings = []
    for rule in rules:
        if split not in rule.splits:
            continue
        probability = float(probabilities[rule.tier][CLASS_INDEX[rule.quality]])
        if probability > rule.above:
            findings.append(
                Finding(rule.name, rule.action, rule.tier, rule.quality, probability, rule.above)
            )
    return Decision(tuple(findings))


def dropped_record(
    shard: str, key: str, split: str, labels: Sequence[str], decision: Decision
) -> dict[str, Any]:
    """One line of dropped.jsonl: which sample, and each rule that removed it."""
    return {
        "key": key,
        "shard": shard,
        "split": split,
        "labels": list(labels),
        "rules": [
            {
                "rule": f.rule,
                "tier": f.tier,
                "quality": f.quality,
                "probability": round(f.probability, 6),
                "above": f.above,
                "reason": f.reason(),
            }
            for f in decision.findings
            if f.action == "drop"
        ],
    }
