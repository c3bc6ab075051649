"""Seeds that depend only on (dataset seed, sample key).

A sample's randomness must not depend on processing order, worker count or batching, so
each sample gets its own generator from a hash rather than a shared stream.
"""

from __future__ import annotations

import hashlib

import numpy as np

SEED_BITS = 63


def derive_seed(dataset_seed: int, key: str) -> int:
    digest = hashlib.sha256(f"{int(dataset_seed)}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << SEED_BITS) - 1)


def generator(seed: int) -> np.random.Generator:
    """The one generator type used for planning and for every recorded noise field."""
    if not 0 <= int(seed) < (1 << 64):
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed}")
    return np.random.Generator(np.random.PCG64(int(seed)))


def draw_seed(rng: np.random.Generator) -> int:
    """A child seed for an op's random field (noise), recorded instead of the field."""
    return int(rng.integers(0, 1 << SEED_BITS))


def seed_only(rng: np.random.Generator, shape: tuple[int, int]) -> dict[str, int]:
    """A type's ``hidden`` sampler when its only unprinted parameter is a random field's seed."""
    del shape
    return {"seed": draw_seed(rng)}
