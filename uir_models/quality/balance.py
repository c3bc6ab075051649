"""Type-balanced sampling for the quality models (Perceive-IR samples tasks evenly).

The proxy restorer and the perceiver both train on a handful of images where a few types
(noise, JPEG, blur from every mixed recipe) outnumber the rest many times over; drawing a type
first keeps the rare ones from being learned from a few percent of the batches.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from uir_models.data.balance import Balance


def type_groups(
    count: int, labels: Callable[[int], tuple[str, ...]], balance: Balance
) -> dict[str, list[int]]:
    """Indices by degradation type (a multi-label sample in each of its types); one group
    ``all`` when ``balance`` is ``none``."""
    if balance == "none":
        return {"all": list(range(count))}
    groups: dict[str, list[int]] = {}
    for index in range(count):
        for label in labels(index) or ("none",):
            groups.setdefault(label, []).append(index)
    return groups


def balanced_indices(
    groups: dict[str, list[int]], count: int, rng: np.random.Generator
) -> list[int]:
    """``count`` sample indices: a type uniformly, then a sample of that type."""
    names = sorted(groups)
    picks = rng.integers(0, len(names), size=count)
    return [groups[names[p]][int(rng.integers(0, len(groups[names[p]])))] for p in picks]
