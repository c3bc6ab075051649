"""WebDataset loaders over the shards, safe under DDP: fixed-length epochs over endless streams.

Training (``train_loader``). Every rank and DataLoader worker ("consumer") reads its own share
of one endless shard stream: the shard list is shuffled into a new permutation per pass, the
passes are concatenated, and shard ``i`` of that stream goes to consumer ``i % consumers``
(split by node, then by worker). The permutation seed is shared by all consumers, so each pass
is dealt out exactly once; because the stream never ends, every consumer keeps getting shards
even when there are fewer shards than ``world_size x num_workers`` or they do not divide
evenly, and every consumer sees every shard over time. ``WebLoader.with_epoch`` then cuts the
same number of batches per epoch on every rank (by default ``ceil(samples / (world_size x
batch_size))``), so no rank starves or waits at a collective for one that ran out.

WebDataset's own ``ResampledShards`` is not used: it seeds from the pid and the clock unless
``deterministic``, and its epoch counter lives in the worker's copy, which non-persistent
workers rebuild from the main process every epoch, so every epoch would replay epoch 0.

Seeding (``TrainLoader.seeding``): with a seed and an epoch, the shard order is fixed for all
ranks; each consumer's shuffle buffer, type balancing and crops/flips use generators seeded
from (seed, epoch, purpose, rank, worker). The batch sequence of a rank is therefore a function
of (seed, epoch, rank, world_size, num_workers): the same on every run, different per epoch.
``TrainLoader`` advances its epoch on each pass; ``set_epoch`` sets it (resume).

Evaluation (``eval_loader``): a finite, non-resampled pass in manifest order; sample ``i`` goes
to consumer ``i % consumers``, so each sample is seen exactly once across ranks and workers
(each consumer reads all shards of the split and keeps its share, which suits small splits).
Ranks differ by at most one sample, so evaluate locally and reduce once at the end.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from uir.dataset import schema
from uir_models.data.balance import Balance, shuffled, type_balanced
from uir_models.data.embeddings import EmbeddingTable, as_embedding_table
from uir_models.data.shards import DatasetError, SplitShards, split_shards
from uir_models.data.transforms import SampleDecoder, collate, parse_sample
from uir_models.config_keys import check_keys

# Purposes of the seeded generators; keys are always (seed, epoch, purpose, rank, worker) so
# no two purposes or consumers share a stream.
_SHARD_ORDER, _SHUFFLE, _BALANCE, _AUGMENT = range(4)
_MEMBERS = frozenset({schema.LQ, schema.HQ, schema.METADATA})

Embeddings = EmbeddingTable | Mapping[str, Mapping[str, torch.Tensor]] | str | Path | None


@dataclass(frozen=True)
class LoaderConfig:
    """Training loader settings (a ``data:`` block of a training config)."""

    batch_size: int = 8
    crop_size: int = 128
    """HQ patch side; the LQ patch is ``crop_size / scale`` for pairs an integer scale apart."""
    num_workers: int = 2
    seed: int = 0
    balance: Balance = "none"
    shuffle_buffer: int = 256
    """Samples (undecoded) in each worker's shuffle buffer when ``balance`` is ``none``."""
    balance_buffer: int = 64
    """Samples kept per type in each worker when ``balance`` is ``types``."""
    batches_per_epoch: int | None = None
    """Batches per rank per epoch; ``None``: ``ceil(split samples / (world_size x batch))``."""
    flip: bool = True
    channel_shuffle: bool = False
    """Permute RGB (the same on LQ and HQ) in every training sample: colour variety when a
    dataset has few photos. Off by default: it changes the random stream of existing runs."""
    upsample_lq: bool = True
    """Resize LQ crops to the HQ crop size (bicubic), so pairs of any integer scale batch."""
    pin_memory: bool = False
    full_verify: bool = False
    """Re-hash every shard against the manifest before loading (reads the whole split)."""

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LoaderConfig:
        check_keys(cls, values, "data loader")
        return cls(**values)

    def __post_init__(self) -> None:
        if self.balance not in ("none", "types"):
            raise ValueError(f"balance must be 'none' or 'types', got {self.balance!r}")
        positive = ("batch_size", "crop_size", "shuffle_buffer", "balance_buffer")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0 or self.seed < 0:
            raise ValueError("num_workers and seed must be >= 0")
        if self.batches_per_epoch is not None and self.batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be >= 1, got {self.batches_per_epoch}")


def rank_and_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """This process's rank and the world size: given, else torch.distributed, else torchrun's
    environment, else a single process. Resolved in the main process and handed to the
    workers, which cannot ask torch.distributed themselves."""
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            found = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            found = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        rank = found[0] if rank is None else rank
        world_size = found[1] if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size}")
    return rank, world_size


def _generator(seed: int, epoch: int, purpose: int, rank: int, worker: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, purpose, rank, worker])


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def dealt_shards(
    urls: Sequence[str], order: np.random.Generator, consumer: int, consumers: int
) -> Iterator[str]:
    """Endless: one permutation of ``urls`` after another, every ``consumers``-th from
    ``consumer`` on. ``order`` must be seeded alike in all consumers."""
    position = 0
    while True:
        for index in order.permutation(len(urls)):
            if position % consumers == consumer:
                yield urls[index]
            position += 1


def read_samples(urls: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Samples of the shards in ``urls``, with only the members a loader needs (extra members
    such as a mask or a proxy-restored image are skipped, not read into memory)."""
    return map(
        parse_sample,
        wds.tariterators.tarfile_samples(
            ({"url": url} for url in urls),
            select_files=lambda name: name.partition(".")[2] in _MEMBERS,
        ),
    )


def _batches(samples: Iterable[dict[str, Any]], size: int) -> Iterator[dict[str, Any]]:
    batch: list[dict[str, Any]] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == size:
            yield collate(batch)
            batch = []
    if batch:
        yield collate(batch)


def _check_types(types: Sequence[str], shards: SplitShards) -> tuple[str, ...]:
    types = tuple(types)
    if not types or len(set(types)) != len(types):
        raise ValueError(f"types must be a non-empty list of distinct names, got {list(types)}")
    if not any(shards.label_counts.get(name) for name in types):
        raise DatasetError(
            f"{shards.folder}: split {shards.split!r} has none of the types {list(types)} "
            f"(its labels: {sorted(shards.label_counts)})"
        )
    return types


class TrainStream(IterableDataset):
    """One consumer's endless batches; build it through ``train_loader``."""

    def __init__(
        self,
        shards: SplitShards,
        decoder: SampleDecoder,
        config: LoaderConfig,
        balanced_types: tuple[str, ...],
        rank: int,
        world_size: int,
    ) -> None:
        super().__init__()
        self.shards = shards
        self.decoder = decoder
        self.config = config
        self.balanced_types = balanced_types
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, workers = _worker()
        consumer, consumers = self.rank * workers + worker, self.world_size * workers
        config, epoch = self.config, self.epoch

        def generator(purpose: int) -> np.random.Generator:
            return _generator(config.seed, epoch, purpose, self.rank, worker)

        order = _generator(config.seed, epoch, _SHARD_ORDER, 0, 0)
        samples = read_samples(dealt_shards(self.shards.urls, order, consumer, consumers))
        if config.balance == "types":
            samples = type_balanced(
                samples, self.balanced_types, config.balance_buffer, generator(_BALANCE)
            )
        else:
            samples = shuffled(samples, config.shuffle_buffer, generator(_SHUFFLE))
        augment = generator(_AUGMENT)
        yield from _batches((self.decoder(raw, augment) for raw in samples), config.batch_size)


class TrainLoader:
    """Fixed-length epochs of collated batches for this rank (``len`` = batches per epoch).

    Batches are dicts: ``lq``/``hq`` (B x 3 x H x W float in [0, 1]), ``labels`` (B x T
    multi-hot over the caller's types), ``types``/``caption``/``prompt``/``key`` (lists), and
    ``degra_emb``/``content_emb`` (B x D) when embeddings were given. Each ``iter`` is the next
    epoch and starts fresh worker processes, which decode and augment.
    """

    def __init__(self, stream: TrainStream, batches_per_epoch: int) -> None:
        self.stream = stream
        self.batches_per_epoch = batches_per_epoch
        self.epoch = 0
        config = stream.config
        self._loader = wds.WebLoader(
            stream,
            batch_size=None,
            num_workers=config.num_workers,
            pin_memory=config.pin_memory,
        ).with_epoch(batches_per_epoch)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next ``iter`` runs (for resuming; iterating advances it)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.stream.epoch = self.epoch  # workers copy the stream when the iterator starts them
        self.epoch += 1
        return iter(self._loader)

    @property
    def seeding(self) -> dict[str, Any]:
        """What decides the batches, for logs and checkpoints."""
        stream = self.stream
        embeddings = stream.decoder.embeddings
        return {
            **asdict(stream.config),
            "next_epoch": self.epoch,
            "rank": stream.rank,
            "world_size": stream.world_size,
            "shards": [Path(url).name for url in stream.shards.urls],
            "shard_sha256": list(stream.shards.sha256),
            "embeddings_sha256": embeddings.sha256 if embeddings is not None else None,
            "balanced_types": list(stream.balanced_types),
            "shard_order": "seed, epoch (shared by all ranks and workers)",
            "per_worker": "seed, epoch, rank, worker: shuffle/balance buffers, crops, flips, channels",
        }


def train_loader(
    folder: str | Path,
    split: str,
    types: Sequence[str],
    config: LoaderConfig | Mapping[str, Any] | None = None,
    *,
    embeddings: Embeddings = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> TrainLoader:
    """Endless, DDP-split training batches of ``split`` with paired random crops and flips.

    ``types`` fixes the order of the multi-hot ``labels`` (labels outside it are not encoded);
    with ``balance: types`` each sample is drawn by a uniform type among those of ``types``
    that the split has (``TrainLoader.seeding["balanced_types"]``). ``embeddings`` (a table, a
    ``{key: {"degra_emb", "content_emb"}}`` mapping, or a ``.pt``/``.npz`` file) attach
    precomputed DA-CLIP embeddings; a sample missing from them raises.
    """
    if not isinstance(config, LoaderConfig):
        config = LoaderConfig.from_dict(config or {})
    rank, world_size = rank_and_world(rank, world_size)
    shards = split_shards(folder, split, full_verify=config.full_verify)
    types = _check_types(types, shards)
    balanced = tuple(name for name in types if shards.label_counts.get(name))
    decoder = SampleDecoder(
        types,
        "random",
        config.crop_size,
        flip=config.flip,
        channel_shuffle=config.channel_shuffle,
        upsample_lq=config.upsample_lq,
        embeddings=as_embedding_table(embeddings),
    )
    batches = config.batches_per_epoch or math.ceil(
        shards.num_samples / (world_size * config.batch_size)
    )
    return TrainLoader(TrainStream(shards, decoder, config, balanced, rank, world_size), batches)


class EvalStream(IterableDataset):
    """One consumer's share of a single ordered pass; build it through ``eval_loader``."""

    def __init__(
        self,
        shards: SplitShards,
        decoder: SampleDecoder,
        batch_size: int,
        rank: int,
        world_size: int,
    ) -> None:
        super().__init__()
        self.shards = shards
        self.decoder = decoder
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, workers = _worker()
        consumer, consumers = self.rank * workers + worker, self.world_size * workers
        mine = (
            raw
            for index, raw in enumerate(read_samples(self.shards.urls))
            if index % consumers == consumer
        )
        yield from _batches(map(self.decoder, mine), self.batch_size)


class EvalLoader:
    """Every sample of the split once across ranks, in batches (the last ones may be short)."""

    def __init__(self, stream: EvalStream, num_workers: int) -> None:
        self.stream = stream
        self.num_workers = num_workers
        self._loader = DataLoader(stream, batch_size=None, num_workers=num_workers)

    def _shares(self) -> list[int]:
        stream, workers = self.stream, max(self.num_workers, 1)
        consumers, total = stream.world_size * workers, stream.shards.num_samples
        return [
            len(range(stream.rank * workers + worker, total, consumers))
            for worker in range(workers)
        ]

    @property
    def num_samples(self) -> int:
        """Samples this rank sees."""
        return sum(self._shares())

    def __len__(self) -> int:
        return sum(math.ceil(share / self.stream.batch_size) for share in self._shares())

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._loader)


def eval_loader(
    folder: str | Path,
    split: str,
    types: Sequence[str],
    *,
    batch_size: int = 1,
    crop_size: int | None = None,
    upsample_lq: bool = True,
    num_workers: int = 0,
    embeddings: Embeddings = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> EvalLoader:
    """Full images (``crop_size`` None; batch 1 unless all sizes agree) or HQ centre crops of
    ``crop_size``, no flips, every sample once across ranks and workers; ``upsample_lq`` as in
    ``LoaderConfig``."""
    if batch_size < 1 or num_workers < 0:
        raise ValueError("batch_size must be >= 1 and num_workers >= 0")
    rank, world_size = rank_and_world(rank, world_size)
    shards = split_shards(folder, split)
    decoder = SampleDecoder(
        _check_types(types, shards),
        "full" if crop_size is None else "center",
        crop_size,
        upsample_lq=upsample_lq,
        embeddings=as_embedding_table(embeddings),
    )
    return EvalLoader(EvalStream(shards, decoder, batch_size, rank, world_size), num_workers)
