"""Mixing stages on the raw sample stream: a shuffle buffer, or class balance over types.

Both run on undecoded samples (PNG bytes), before the per-sample decode, so buffers stay small
and no work is spent on samples that balancing drops.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

import numpy as np

from uir_models.data.transforms import RawSample

Balance = Literal["none", "types"]


def shuffled(
    samples: Iterable[RawSample], buffer_size: int, rng: np.random.Generator
) -> Iterator[RawSample]:
    """Reservoir shuffle: samples from one shard are spread over ``buffer_size`` positions."""
    buffer: list[RawSample] = []
    for sample in samples:
        if len(buffer) < buffer_size:
            buffer.append(sample)
            continue
        slot = int(rng.integers(len(buffer)))
        yield buffer[slot]
        buffer[slot] = sample
    while buffer:  # only reached on a finite stream (the endless training stream never ends)
        yield buffer.pop(int(rng.integers(len(buffer))))


def type_balanced(
    samples: Iterable[RawSample],
    types: Sequence[str],
    buffer_size: int,
    rng: np.random.Generator,
) -> Iterator[RawSample]:
    """Each output draws a type uniformly from ``types``, then a buffered sample of that type.

    Streaming, so there is no index to draw from: one buffer per type is fed from the stream
    (a sample with several labels goes into the buffer of each), and a full buffer replaces a
    random entry, so common types are subsampled. Draws are with replacement, so a rare type's
    few samples recur (the IR-SDE recipe: "type = index % 10, then a random image of that
    type"). One stream sample is read per output, more while the drawn type's buffer is still
    empty; that wait ends because every worker's endless shard stream visits every shard.
    Samples with none of ``types`` are skipped. ``types`` must all occur in the stream.
    """
    buffers: dict[str, list[RawSample]] = {name: [] for name in types}
    stream = iter(samples)

    def take() -> None:
        sample = next(stream)
        for label in sample["meta"]["labels"]:
            buffer = buffers.get(label)
            if buffer is None:
                continue
            if len(buffer) < buffer_size:
                buffer.append(sample)
            else:
                buffer[int(rng.integers(buffer_size))] = sample

    while True:
        try:
            take()
            chosen = buffers[types[int(rng.integers(len(types)))]]
            while not chosen:
                take()
        except StopIteration:
            return
        yield chosen[int(rng.integers(len(chosen)))]
