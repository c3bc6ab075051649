"""Two DDP ranks (torchrun, gloo, CPU) reading 3 shards with 2 workers each: 3 shards for 4
consumers, so a naive split would starve one and hang the other at its next all_reduce. The
run has a deadline, so a hang fails the test instead of stalling CI."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from uir.dataset import schema
from uir.dataset.verify import iter_samples
from uir_models.data import train_loader

TYPES = ["noisy", "hazy"]
SAMPLES, SHARD_SIZE, BATCH, EPOCHS = 24, 8, 4, 2
DEADLINE_S = 150


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, make_photo, build_pairs_dataset) -> Path:
    """24 real pairs (18 noisy, 6 hazy) in 3 train shards, built by the real builder."""
    root = tmp_path_factory.mktemp("ddp-shards")
    for index in range(SAMPLES):
        label = "hazy" if index % 4 == 0 else "noisy"
        for side in ("gt", "lq"):
            make_photo(
                root / label / side / f"{index:03d}.png",
                (32, 32),
                index,
                caption=f"photo {index}" if side == "gt" else None,
            )
    sources = [(label, label, label, "train") for label in TYPES]
    return build_pairs_dataset(root, "ddp", sources, max_count=SHARD_SIZE)


def _rank_main(folder: str, out: str) -> None:
    """One rank: each epoch, every batch is followed by an all_reduce, as DDP's backward."""
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    record: dict[str, list] = {"batches": [], "keys": []}
    for balance in ("none", "types"):
        loader = train_loader(
            folder,
            "train",
            TYPES,
            {
                "batch_size": BATCH,
                "crop_size": 16,
                "num_workers": 2,
                "seed": 5,
                "balance": balance,
            },
        )
        for _ in range(EPOCHS):
            count = 0
            for batch in loader:
                loss = batch["lq"].mean()
                dist.all_reduce(loss)
                count += 1
                record["keys"] += batch["key"]
            record["batches"].append(count)
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    dist.barrier()
    dist.destroy_process_group()


def test_two_ranks_uneven_shards_finish_with_equal_batches(dataset, tmp_path, cli_env):
    assert len(list(dataset.glob("train-*.tar"))) == 3
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        __file__,
        str(dataset),
        str(tmp_path),
    ]
    env = {**cli_env, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # torchrun, both ranks and their workers
        output, _ = process.communicate()
        pytest.fail(f"DDP run hung (killed after {DEADLINE_S} s):\n{output[-3000:]}")
    assert process.returncode == 0, output[-3000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    per_epoch = math.ceil(SAMPLES / (2 * BATCH))
    assert ranks[0]["batches"] == ranks[1]["batches"] == [per_epoch] * (2 * EPOCHS)
    shard_of = {
        key: path.name
        for path in dataset.glob("train-*.tar")
        for key, members in iter_samples(path)
        if schema.METADATA in members
    }
    keys = [set(r["keys"]) for r in ranks]
    assert {shard_of[k] for k in keys[0] | keys[1]} == set(shard_of.values())
    assert keys[0] != keys[1]  # the ranks read different shares, not one replicated stream


if __name__ == "__main__":
    _rank_main(sys.argv[1], sys.argv[2])
