"""Loading batches from shards (uir_models.data): shard lists, paired crops, labels, class
balance, seeding, fixed epochs, worker-side decoding, embeddings, the eval pass."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from uir.dataset import schema
from uir.dataset.verify import iter_samples
from uir_models.data import (
    DatasetError,
    EmbeddingTable,
    LoaderConfig,
    MissingEmbeddingError,
    eval_loader,
    split_shards,
    train_loader,
    transforms,
)
from uir_models.data.transforms import paired_channel_shuffle, paired_flip, paired_random_crop

# label, split, pairs, LQ scale: a skewed train split (12 : 3 : 1) and a small val split.
# LQ is the HQ itself (scale 1) or every scale-th HQ pixel, so alignment is checkable exactly.
SOURCES = [
    ("noisy", "train", 24, 1),
    ("hazy", "train", 6, 1),
    ("low-resolution", "train", 2, 2),
    ("rainy", "val", 4, 1),
    ("snowy", "val", 1, 2),
]
TYPES = ["noisy", "hazy", "low-resolution", "rainy"]
SIZE = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, make_photo, build_pairs_dataset) -> Path:
    """Built by the real builder from real pairs: 32 train samples in 4 shards, 5 val."""
    root = tmp_path_factory.mktemp("shards")
    seed = 0
    for label, _, count, scale in SOURCES:
        for index in range(count):
            seed += 1
            gt = make_photo(
                root / label / "gt" / f"{index:03d}.png",
                (SIZE, SIZE),
                seed,
                caption=f"photo {seed}",
            )
            hq = np.asarray(Image.open(gt))
            make_photo(
                root / label / "lq" / f"{index:03d}.png",
                pixels=np.ascontiguousarray(hq[::scale, ::scale]),
            )
    sources = [(label, label, label, split) for label, split, _, _ in SOURCES]
    return build_pairs_dataset(root, "skew", sources, max_count=8)


def _metadata(folder: Path, split: str) -> dict[str, dict]:
    return {
        key: json.loads(members[schema.METADATA])
        for path in sorted(folder.glob(f"{split}-*.tar"))
        for key, members in iter_samples(path)
    }


def _config(**changes) -> dict:
    return {"batch_size": 4, "crop_size": 16, "num_workers": 0, "seed": 7, **changes}


# --- shard lists ----------------------------------------------------------------------------


def test_shard_lists_come_from_the_manifest(dataset, tmp_path):
    train = split_shards(dataset, "train")
    assert train.num_samples == 32 and len(train.urls) == 4
    assert train.sizes == (8, 8, 8, 8)
    assert train.label_counts == {"noisy": 24, "hazy": 6, "low-resolution": 2}
    assert [Path(u).name for u in train.urls] == [f"train-0000{i}-00.tar" for i in range(4)]
    assert split_shards(dataset, "val").num_samples == 5

    with pytest.raises(DatasetError, match="no such dataset folder"):
        split_shards(tmp_path / "nowhere", "train")
    with pytest.raises(DatasetError, match="has no samples"):
        split_shards(dataset, "test")
    with pytest.raises(DatasetError, match="unknown split"):
        split_shards(dataset, "training")

    unfinished = tmp_path / "unfinished"
    shutil.copytree(dataset, unfinished)
    (unfinished / schema.MANIFEST).unlink()
    with pytest.raises(DatasetError, match="not a finished UIR Forge dataset"):
        train_loader(unfinished, "train", TYPES, _config())

    damaged = tmp_path / "damaged"
    shutil.copytree(dataset, damaged)
    shard = damaged / "train-00001-00.tar"
    shard.write_bytes(shard.read_bytes()[:-512])
    with pytest.raises(DatasetError, match="not the size the manifest records"):
        split_shards(damaged, "train")


def test_bad_config_and_types_are_refused(dataset):
    with pytest.raises(ValueError, match="unknown data loader keys"):
        LoaderConfig.from_dict({"batchsize": 4})
    with pytest.raises(ValueError, match="balance must be"):
        LoaderConfig.from_dict({"balance": "labels"})
    with pytest.raises(DatasetError, match="has none of the types"):
        train_loader(dataset, "train", ["snowy"], _config())
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        train_loader(dataset, "train", TYPES, _config(), rank=2, world_size=2)


# --- paired crops ---------------------------------------------------------------------------


_FLIPS = {
    "none": lambda a: a,
    "h": lambda a: a[:, ::-1],
    "v": lambda a: a[::-1],
    "hv": lambda a: a[::-1, ::-1],
}


def test_paired_random_crop_keeps_scaled_pairs_aligned():
    rng = np.random.default_rng(0)
    hq = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    for scale in (1, 2, 4):
        lq = np.ascontiguousarray(hq[::scale, ::scale])
        flips = set()
        for _ in range(20):
            lq_box, hq_box = paired_random_crop(lq, hq, 16, rng, "k")
            assert hq_box.shape == (16, 16, 3) and lq_box.shape == (16 // scale, 16 // scale, 3)
            assert np.array_equal(lq_box, hq_box[::scale, ::scale])
            lq_flip, hq_flip = paired_flip(lq_box, hq_box, rng)
            flip = next(f for f in _FLIPS if np.array_equal(hq_flip, _FLIPS[f](hq_box)))
            assert np.array_equal(lq_flip, _FLIPS[flip](lq_box))  # the same flips on LQ
            flips.add(flip)
        assert len(flips) == 4
    with pytest.raises(ValueError, match="not divisible by the LQ scale"):
        paired_random_crop(hq[::4, ::4], hq, 18, rng, "k")
    with pytest.raises(ValueError, match="not an integer scale apart"):
        paired_random_crop(hq[:30], hq, 16, rng, "k")
    with pytest.raises(ValueError, match="smaller than the crop"):
        paired_random_crop(hq, hq, 64, rng, "k")


def test_batches_hold_aligned_crops_and_multi_hot_labels(dataset):
    meta = _metadata(dataset, "train")
    loader = train_loader(dataset, "train", TYPES, _config(batches_per_epoch=12))
    seen = set()
    for batch in loader:
        assert batch["lq"].shape == batch["hq"].shape == (4, 3, 16, 16)
        assert batch["lq"].dtype == torch.float32
        assert batch["lq"].min() >= 0 and batch["hq"].max() <= 1
        for i, key in enumerate(batch["key"]):
            seen.add(key)
            labels = meta[key]["labels"]
            assert batch["types"][i] == labels
            assert batch["labels"][i].tolist() == [float(t in labels) for t in TYPES]
            assert batch["caption"][i] == meta[key]["caption"]
            assert batch["prompt"][i] == meta[key]["prompt"]
            if labels != ["low-resolution"]:  # identity pairs: same box, same flips
                assert torch.equal(batch["lq"][i], batch["hq"][i])
            else:  # LQ crop upsampled to the HQ crop: close to it, not equal
                assert (batch["lq"][i] - batch["hq"][i]).abs().mean() < 0.15
    assert len(seen) > 20
    # labels outside the caller's list are not encoded (they stay listed in "types")
    assert transforms.multi_hot(["noisy", "blurry"], ["hazy", "noisy"]).tolist() == [0.0, 1.0]


_ORDERS = [list(order) for order in itertools.permutations(range(3))]


def test_channel_shuffle_permutes_lq_and_hq_alike_and_only_when_asked(dataset):
    rng = np.random.default_rng(0)
    hq = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    lq = hq // 2
    orders = set()
    for _ in range(60):
        lq_out, hq_out = paired_channel_shuffle(lq, hq, rng)
        order = next(o for o in _ORDERS if np.array_equal(hq_out, hq[..., o]))
        assert np.array_equal(lq_out, lq[..., order])
        orders.add(tuple(order))
    assert len(orders) == 6

    def by_key(shuffle: bool) -> dict[str, dict[str, torch.Tensor]]:
        # whole images, no flips: the only difference channel_shuffle can make is the order
        config = _config(batches_per_epoch=8, crop_size=SIZE, flip=False, channel_shuffle=shuffle)
        return {
            key: {"lq": lq, "hq": hq}
            for batch in train_loader(dataset, "train", TYPES, config)
            for key, lq, hq in zip(batch["key"], batch["lq"], batch["hq"], strict=True)
        }

    plain, shuffled = by_key(False), by_key(True)
    assert plain.keys() == shuffled.keys()
    swapped = 0
    for key, sample in shuffled.items():
        order = next(o for o in _ORDERS if torch.equal(sample["hq"], plain[key]["hq"][o]))
        assert torch.equal(sample["lq"], plain[key]["lq"][order])
        swapped += order != [0, 1, 2]
    assert swapped > len(shuffled) // 2


def test_eval_loader_scaled_pairs_full_and_centre_crops(dataset):
    meta = _metadata(dataset, "val")
    sr = next(key for key, m in meta.items() if m["labels"] == ["snowy"])
    full = {b["key"][0]: b for b in eval_loader(dataset, "val", TYPES, upsample_lq=False)}
    assert full[sr]["hq"].shape == (1, 3, SIZE, SIZE)
    assert torch.equal(full[sr]["lq"], full[sr]["hq"][..., ::2, ::2])
    centre = eval_loader(dataset, "val", TYPES, crop_size=16, upsample_lq=False)
    batch = next(b for b in centre if b["key"] == [sr])
    assert torch.equal(batch["hq"], full[sr]["hq"][..., 8:24, 8:24])
    assert torch.equal(batch["lq"], batch["hq"][..., ::2, ::2])
    upsampled = eval_loader(dataset, "val", TYPES, batch_size=5)
    [everything] = list(upsampled)
    assert everything["lq"].shape == everything["hq"].shape == (5, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="cannot batch lq"):
        list(eval_loader(dataset, "val", TYPES, batch_size=5, upsample_lq=False))


# --- class balance --------------------------------------------------------------------------


def _type_shares(dataset: Path, balance: str, batches: int) -> dict[str, float]:
    loader = train_loader(
        dataset,
        "train",
        TYPES,
        _config(balance=balance, batch_size=8, crop_size=8, flip=False, batches_per_epoch=batches),
    )
    counts = Counter(label for batch in loader for labels in batch["types"] for label in labels)
    total = sum(counts.values())
    return {name: counts[name] / total for name in ("noisy", "hazy", "low-resolution")}


def test_balance_types_draws_types_uniformly_on_a_skewed_split(dataset):
    n = 50 * 8
    skewed = _type_shares(dataset, "none", 50)
    assert skewed["noisy"] > 0.6 and skewed["low-resolution"] < 0.15  # 24 : 6 : 2 as stored
    balanced = _type_shares(dataset, "types", 50)
    tolerance = 4 * math.sqrt((1 / 3) * (2 / 3) / n)  # ~0.094 for 400 draws
    assert all(abs(share - 1 / 3) < tolerance for share in balanced.values()), balanced
    # "rainy" is in the type list but not in the train split: it is not balanced over.
    loader = train_loader(dataset, "train", TYPES, _config(balance="types"))
    assert loader.seeding["balanced_types"] == ["noisy", "hazy", "low-resolution"]


# --- epochs, seeds, workers -----------------------------------------------------------------


def _epoch(loader) -> list[tuple[list[str], torch.Tensor]]:
    return [(batch["key"], batch["lq"]) for batch in loader]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        ka == kb and torch.equal(xa, xb) for (ka, xa), (kb, xb) in zip(a, b, strict=True)
    )


def test_seed_rank_and_epoch_decide_the_batches(dataset):
    def loader(seed: int = 7, rank: int = 0, workers: int = 0):
        return train_loader(
            dataset,
            "train",
            TYPES,
            _config(seed=seed, num_workers=workers),
            rank=rank,
            world_size=2,
        )

    first, again = loader(), loader()
    epoch0, epoch1 = _epoch(first), _epoch(first)
    assert len(epoch0) == len(first) == math.ceil(32 / (2 * 4)) == 4
    assert _same(epoch0, _epoch(again))
    assert not _same(epoch0, epoch1)  # iterating advances the epoch
    again.set_epoch(1)
    assert _same(epoch1, _epoch(again))
    assert not _same(epoch0, _epoch(loader(seed=8)))
    assert not _same(epoch0, _epoch(loader(rank=1)))
    with_workers = _epoch(loader(workers=2))
    assert _same(with_workers, _epoch(loader(workers=2)))
    assert first.seeding["next_epoch"] == 2 and first.seeding["world_size"] == 2


def test_fixed_epoch_length_with_more_consumers_than_shards(dataset):
    # 4 shards, 3 ranks x 2 workers: every rank still gets its fixed number of batches.
    lengths = set()
    for rank in range(3):
        loader = train_loader(
            dataset, "train", TYPES, _config(num_workers=2), rank=rank, world_size=3
        )
        assert len(loader) == math.ceil(32 / (3 * 4))
        lengths.add(sum(1 for _ in loader))
    assert lengths == {3}
    assert len(train_loader(dataset, "train", TYPES, _config(batches_per_epoch=5))) == 5


def test_decoding_happens_in_the_worker_processes(dataset, monkeypatch):
    main = os.getpid()
    decode = transforms.decode_rgb

    def decode_in_worker(data: bytes, where: str) -> np.ndarray:
        if os.getpid() == main:
            raise AssertionError("decoded in the main process")
        return decode(data, where)

    monkeypatch.setattr(transforms, "decode_rgb", decode_in_worker)  # workers are forked
    loader = train_loader(dataset, "train", TYPES, _config(num_workers=2, batches_per_epoch=2))
    assert sum(1 for _ in loader) == 2


# --- embeddings -----------------------------------------------------------------------------


def test_precomputed_embeddings_are_attached_by_key(dataset, tmp_path):
    keys = sorted(_metadata(dataset, "train"))
    g = torch.Generator().manual_seed(0)
    table = EmbeddingTable(
        tuple(keys), torch.randn(len(keys), 6, generator=g), torch.randn(len(keys), 6, generator=g)
    )
    for path in (tmp_path / "emb.pt", tmp_path / "emb.npz"):
        table.save(path)
        loaded = EmbeddingTable.load(path)
        assert loaded.keys == table.keys and torch.equal(loaded.degra, table.degra)
        assert loaded.sha256 == table.sha256
    retrained = EmbeddingTable(table.keys, table.degra.clone(), table.content + 1e-3)
    assert retrained.sha256 != table.sha256  # a resumed restorer run must notice
    loader = train_loader(
        dataset, "train", TYPES, _config(batches_per_epoch=3), embeddings=tmp_path / "emb.npz"
    )
    assert loader.seeding["embeddings_sha256"] == table.sha256
    for batch in loader:
        assert batch["degra_emb"].shape == batch["content_emb"].shape == (4, 6)
        for i, key in enumerate(batch["key"]):
            row = keys.index(key)
            assert torch.equal(batch["degra_emb"][i], table.degra[row])
            assert torch.equal(batch["content_emb"][i], table.content[row])

    mapping = {
        k: {"degra_emb": table.degra[i], "content_emb": table.content[i]}
        for i, k in enumerate(keys[1:], start=1)
    }
    partial = train_loader(
        dataset, "train", TYPES, _config(batches_per_epoch=20), embeddings=mapping
    )
    with pytest.raises(MissingEmbeddingError, match=f"sample {keys[0]} has no precomputed"):
        list(partial)


# --- evaluation -----------------------------------------------------------------------------


def test_eval_pass_sees_every_sample_once_across_ranks_and_workers(dataset):
    everything = set(_metadata(dataset, "train"))
    seen: list[str] = []
    for rank in range(3):
        loader = eval_loader(
            dataset,
            "train",
            TYPES,
            batch_size=4,
            crop_size=16,
            num_workers=2,
            rank=rank,
            world_size=3,
        )
        batches = list(loader)
        assert len(batches) == len(loader)
        keys = [key for batch in batches for key in batch["key"]]
        assert len(keys) == loader.num_samples
        seen += keys
        again = [key for batch in loader for key in batch["key"]]
        assert again == keys  # ordered and repeatable
    assert sorted(seen) == sorted(everything)
